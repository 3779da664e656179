"""Multi-process data parallelism: 2 processes x 4 CPU devices (jax.distributed, gloo
collectives, one coordinator on 127.0.0.1) compute what 1 process x 8 devices computes on the
same global batches: `DataParallel` steps (and a flag every process agrees on), and `train.py`
end to end, whose checkpoints resume in the other process count."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gans_jax.trainers import dcgan
from tests.helpers import smoke_config, tiny_digits

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "gans_jax" / "configs" / "dcgan_mnist.py") + ":smoke"
DEVICES = 8  # in all, however many processes share them
# Variables of the test process that must not reach the runs: each run chooses its own device
# count and its own multi-process job.
INHERITED_NOT = ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "JAX_NUM_CPU_DEVICES", "COMMON_JAX_DISTRIBUTED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env(processes: int, index: int, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in INHERITED_NOT}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // processes}")
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index))
    return env


def launch(cmd: list[str], processes: int, timeout: int = 300) -> list[str]:
    """Runs `cmd` in `processes` processes sharing 8 CPU devices; their outputs, in order."""
    port = free_port()
    runs = [subprocess.Popen(cmd, cwd=ROOT, env=run_env(processes, i, port), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(processes)]
    outputs = []
    try:
        for run in runs:
            outputs.append(run.communicate(timeout=timeout))
    finally:
        for run in runs:  # a process that failed leaves the others waiting for it
            if run.poll() is None:
                run.kill()
                run.communicate()
    for i, (run, (_, stderr)) in enumerate(zip(runs, outputs, strict=True)):
        if run.returncode != 0:  # not an AssertionError: a crash is never the expected failure
            raise RuntimeError(f"process {i} of {processes} failed:\n{stderr[-3000:]}")
    return [stdout for stdout, _ in outputs]


# A few data-parallel steps on fixed global batches; each process feeds its rows of them.
STEPS = """
import json
from common_jax import parallel
parallel.maybe_initialize_distributed()
import jax, jax.numpy as jnp, numpy as np
from common_jax.errors import UserError
from common_jax.parallel import AXIS, DataParallel

def step(state, batch):
    grad = jax.lax.pmean(jnp.mean(batch, axis=0) * state["w"], AXIS)
    return {"w": state["w"] - 0.5 * grad}, {"loss": jax.lax.pmean(jnp.mean(batch ** 2), AXIS)}

dp = DataParallel()
share = dp.check_batch_size(16)
rows = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
state, step_fn, losses = dp.put_state({"w": np.ones(5, np.float32)}), dp.compile(step), []
for batch in np.random.RandomState(0).randn(3, 16, 5).astype(np.float32):
    state, metrics = step_fn(state, dp.put_batch(batch[rows]))
    losses.append(dp.get_metrics(metrics)["loss"])
local = dp.local_state(state)["w"]
try:
    DataParallel("pmap")
    pmap = "accepted"
except UserError as error:
    pmap = str(error)
stop = parallel.any_process(jax.process_index() == jax.process_count() - 1)
result = {"share": share, "stop": stop, "losses": losses, "w": np.asarray(local).tolist(),
          "local": local.devices() == {jax.local_devices()[0]}, "pmap": pmap,
          "global": not state["w"].is_fully_addressable}
import sys
with open(f"{sys.argv[1]}.{jax.process_index()}.json", "w") as f:
    json.dump(result, f)
"""


def step_results(out: Path, processes: int) -> list[dict]:
    """Each process's result, written to a file: gloo writes to stdout from C++, unbuffered,
    and can land in the middle of a line printed from Python."""
    launch([sys.executable, "-c", STEPS, str(out)], processes)
    return [json.loads(Path(f"{out}.{i}.json").read_text()) for i in range(processes)]


def test_data_parallel_steps_in_two_processes_equal_one(tmp_path):
    two = step_results(tmp_path / "two", processes=2)
    (one,) = step_results(tmp_path / "one", processes=1)
    assert [r["share"] for r in two] == [8, 8] and one["share"] == 16
    assert all(r["global"] and r["local"] for r in two) and not one["global"]
    assert [r["stop"] for r in two] == [True, True]  # the last process's flag reaches both
    for result in two:
        np.testing.assert_allclose(result["losses"], one["losses"], rtol=1e-6)
        np.testing.assert_allclose(result["w"], one["w"], rtol=1e-6)
    assert "--config.parallel=shard_map" in two[0]["pmap"] and one["pmap"] == "accepted"


def train(workdir: Path, data: Path, processes: int, steps: int, timeout: int = 300) -> None:
    """`train.py` on the smoke config in `processes` processes sharing 8 CPU devices."""
    cmd = [sys.executable, str(ROOT / "train.py"), f"--config={CONFIG}", f"--workdir={workdir}",
           f"--config.data.path={data}", "--config.data.tfds_name=",
           "--config.parallel=shard_map", f"--config.num_steps={steps}"]
    launch(cmd, processes, timeout)


def final_state(workdir: Path, config) -> dict[str, np.ndarray]:
    """The latest checkpoint's state as host arrays, by path."""
    abstract = jax.eval_shape(lambda: dcgan.create_state(config))
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
    with ocp.CheckpointManager(workdir / "checkpoints",
                               item_names=("state", "meta")) as manager:
        step = manager.latest_step()
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    assert restored["meta"]["step"] == step
    flat = jax.tree_util.tree_flatten_with_path(restored["state"])[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=1e-5, err_msg=key)


@pytest.fixture
def digits(tmp_path) -> Path:
    return tiny_digits(tmp_path / "digits")


def test_two_processes_train_what_one_trains_and_resume_across_process_counts(tmp_path, digits):
    config = ml_collections.FrozenConfigDict(smoke_config(digits))
    # 2 x 4 devices and 1 x 8 devices, 4 steps on the same global batches of 16.
    train(tmp_path / "two", digits, processes=2, steps=4)
    train(tmp_path / "one", digits, processes=1, steps=4)
    two, one = final_state(tmp_path / "two", config), final_state(tmp_path / "one", config)
    assert int(two[".step"]) == 4
    assert_same_state(two, one)
    # The 2-process checkpoint resumes in one process; the 1-process one in two.
    train(tmp_path / "two", digits, processes=1, steps=6)
    train(tmp_path / "one", digits, processes=2, steps=6)
    two, one = final_state(tmp_path / "two", config), final_state(tmp_path / "one", config)
    assert int(two[".step"]) == 6
    assert_same_state(two, one)
    assert (tmp_path / "two" / "samples_final.png").is_file()  # written by process 0 alone
