"""common_jax.parallel: joining a multi-process job from the environment (without touching
JAX's backend first), and the data-parallel helper's placement, forward and local copies."""

import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common_jax import parallel
from common_jax.errors import UserError
from common_jax.parallel import AXIS, MODES, DataParallel

EXPLICIT = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": "1"}
SLURM = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "2",
         "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


# ------------------------------------------------------------------- joining a multi-process job

@pytest.mark.parametrize("env, expected", [
    ({}, None),
    (EXPLICIT, {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}),
    ({**EXPLICIT, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}, None),
    ({**EXPLICIT, "COMMON_JAX_DISTRIBUTED": "0"}, None),
    # Cluster jobs: JAX reads the rest itself.
    (SLURM, {"coordinator_address": None, "num_processes": None, "process_id": None}),
    ({**SLURM, "SLURM_NTASKS": "1"}, None),  # a one-task allocation stays one process
    ({**SLURM, "JAX_COORDINATOR_ADDRESS": "node01:5555"},
     {"coordinator_address": "node01:5555", "num_processes": None, "process_id": None}),
    ({"OMPI_MCA_orte_hnp_uri": "1@tcp://10.0.0.1:2", "OMPI_COMM_WORLD_SIZE": "4"},
     {"coordinator_address": None, "num_processes": None, "process_id": None}),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"},
     {"coordinator_address": None, "num_processes": None, "process_id": None}),
    ({"TPU_WORKER_HOSTNAMES": "t0"}, None),
    ({"COMMON_JAX_DISTRIBUTED": "1"},
     {"coordinator_address": None, "num_processes": None, "process_id": None}),
])
def test_the_environment_decides_whether_and_how_to_join(env, expected):
    assert parallel.distributed_arguments(env) == expected


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}, "JAX_NUM_PROCESSES and JAX_PROCESS_ID"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS"),
    ({**EXPLICIT, "JAX_PROCESS_ID": "first"}, "JAX_PROCESS_ID='first' is not an integer"),
    ({"COMMON_JAX_DISTRIBUTED": "maybe"}, "set it to auto, 1 or 0"),
])
def test_an_incomplete_launch_is_one_line_naming_the_fix(env, message):
    with pytest.raises(UserError, match=message):
        parallel.distributed_arguments(env)


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                          "JAX_PROCESS_ID", "COMMON_JAX_DISTRIBUTED")}
    result = subprocess.run([sys.executable, "-c", code], env={**clean, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


JOIN = ("from common_jax import parallel; from jax._src import xla_bridge; import jax; "
        "joined = parallel.maybe_initialize_distributed(); "
        "before = xla_bridge.backends_are_initialized(); "
        "cores = parallel.use_cpu_cores((128,), cores=4); "
        "print(joined, before, cores, jax.device_count(), jax.process_count())")


def test_joining_creates_no_backend_so_the_cpu_device_count_still_applies():
    assert run_python(JOIN) == "False False 4 4 1"  # nothing to join
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A one-process job, forced: jax.distributed.initialize() really runs, and only then the
    # backend starts, with the device count chosen after it.
    joined = run_python(JOIN, COMMON_JAX_DISTRIBUTED="1", JAX_NUM_PROCESSES="1",
                        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_PROCESS_ID="0")
    assert joined == "True False 4 4 1"


# ---------------------------------------------------------------------- the data-parallel helper

class Norm(nn.Module):
    """A layer whose output depends on the whole batch (batch norm over the devices)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(4)(x)
        return nn.BatchNorm(use_running_average=False, axis_name=AXIS)(x)


def test_forward_equals_one_device_on_the_whole_batch_and_compiles_once():
    model = Norm()
    x = np.random.RandomState(0).randn(16, 3).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x[:2])
    # One device holds the whole batch: the same layers without an axis to average over.
    dense = nn.Dense(4).apply({"params": variables["params"]["Dense_0"]}, x)
    direct = nn.BatchNorm(use_running_average=False).apply(
        {"params": variables["params"]["BatchNorm_0"],
         "batch_stats": variables["batch_stats"]["BatchNorm_0"]}, dense, mutable=["batch_stats"])[0]

    def per_device(v, batch):
        return model.apply(v, batch, mutable=["batch_stats"])[0]

    dp = DataParallel(devices=jax.devices())
    forward = dp.forward(per_device, key=("norm", model))
    out = forward(dp.put_replicated(variables), dp.put_split(x))
    assert out.sharding.spec == dp.split.spec and len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), np.asarray(direct), atol=1e-5)
    again = DataParallel(devices=jax.devices()).forward(lambda v, b: None, key=("norm", Norm()))
    assert again is forward  # an equal key on the same devices reuses the compiled function
    assert DataParallel(devices=jax.devices()[:2]).forward(per_device, key=("norm", model)) \
        is not forward


def test_local_state_is_a_copy_on_the_first_device_that_outlives_donation():
    dp = DataParallel("shard_map")
    step = dp.compile(lambda s, b: ({"w": s["w"] + jax.lax.pmean(b.mean(), AXIS)}, {}))
    state = dp.put_state({"w": jnp.ones((3,))})
    local = dp.local_state(state)
    assert local["w"].devices() == {jax.local_devices()[0]}
    state, _ = step(state, dp.put_batch(np.ones((8,), np.float32)))  # donates the old buffers
    assert not local["w"].is_deleted() and np.asarray(local["w"]).tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_array_equal(np.asarray(dp.local_state(state)["w"]), [2.0, 2.0, 2.0])
    # A local copy goes back onto the mesh (a stage that transforms the state does this).
    back = dp.put_state(dp.local_state(state))
    assert back["w"].sharding == dp.replicated


def test_pmap_local_state_and_batch_share():
    dp = DataParallel("pmap", jax.devices()[:4])
    state = dp.put_state({"w": np.arange(3.0, dtype=np.float32)})
    assert state["w"].shape == (4, 3)
    assert dp.local_state(state)["w"].shape == (3,)
    assert dp.check_batch_size(16) == 16  # one process holds the whole batch


@pytest.mark.parametrize("mode", MODES)
def test_put_state_returns_once_every_copy_is_in_place(mode):
    """A first step dispatched behind queued copies could deadlock on CPU devices, so the
    copies are waited for; the state here is still being computed when it is handed over."""
    dp = DataParallel(mode, jax.devices()[:2])
    x = jnp.ones((768, 768))
    for _ in range(12):  # dispatched asynchronously, a few hundred ms of work in all
        x = (x @ x) / 768.0
    state = dp.put_state({"w": x, "step": jnp.zeros((), jnp.int32)})
    assert all(leaf.is_ready() for leaf in jax.tree.leaves(state))


def test_batch_share_and_padding():
    dp = DataParallel(devices=jax.devices()[:4])
    assert dp.check_batch_size(12) == 12 and dp.round_up(13) == 16 and dp.round_up(16) == 16
    with pytest.raises(UserError, match="multiple of 4"):
        dp.check_batch_size(10)
