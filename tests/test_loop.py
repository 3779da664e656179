"""The shared loop's task API: several named streams, stages with their own shapes, exact
resumption in the middle of a stage, a stage's entry hook, and `every = 0` meaning never."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from common_jax import loop, parallel
from common_jax.checkpoint import Checkpointer
from tests.helpers import tiny_digits

TRACES: dict[str, int] = {}


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    return tiny_digits(root / "a", n=64, seed=1), tiny_digits(root / "b", n=40, seed=2)


def loop_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed, c.batch_size, c.num_steps = 0, 16, 10
    c.parallel, c.keep_checkpoints, c.progress_bar = "shard_map", 3, False
    c.log_every, c.checkpoint_every, c.allow_config_change = 1, 100, False
    c.update(overrides)
    return c


def data(path) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"path": str(path), "tfds_name": "", "split": "train"})


def make_step(stage_name: str):
    """A step whose state depends on every batch and on their order (a decayed sum)."""
    def step(state, batch):
        TRACES[stage_name] = TRACES.get(stage_name, 0) + 1
        a, b = batch["a"]["image"], batch["b"]["image"]
        # per-device means, averaged over devices: what one device computes on the whole batch
        a_mean = jax.lax.pmean(a.mean(), parallel.AXIS)
        b_mean = jax.lax.pmean(b.mean(), parallel.AXIS)
        total = 0.9 * state["total"] + a_mean + 2.0 * b_mean
        metrics = {"a_mean": a_mean, "size": jnp.float32(a.shape[1])}
        return {"total": total, "step": state["step"] + 1, "entered": state["entered"]}, metrics
    return step


def two_stage_task(domains, periodic=None) -> loop.Task:
    path_a, path_b = domains

    def streams(size, batch_a, batch_b):
        return {"a": loop.Stream(data=data(path_a), batch_size=batch_a, image_size=size,
                                 channels=1, seed=3),
                "b": loop.Stream(data=data(path_b), batch_size=batch_b, image_size=size,
                                 channels=1, seed=4, augment="flip")}

    def enter_second(state):  # e.g. a new stage's schedule or fade-in starts here
        return {**state, "entered": state["entered"] + 1}

    return loop.Task(
        create_state=lambda: {"total": jnp.zeros((), jnp.float32),
                              "step": jnp.zeros((), jnp.int32),
                              "entered": jnp.zeros((), jnp.int32)},
        stages=[
            loop.Stage("small", 4, make_step("small"), streams(8, 16, 8)),
            loop.Stage("large", 6, make_step("large"), streams(16, 8, 16), enter=enter_second),
        ],
        periodic=periodic or {},
    )


def saved_state(workdir):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    step = checkpointer.steps()[-1]
    abstract = jax.eval_shape(two_stage_task(("x", "y")).create_state)
    state, meta = checkpointer.restore(step, abstract)
    checkpointer.close()
    return jax.device_get(state), meta


def metrics_records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_stages_run_in_order_each_compiled_once_with_their_own_shapes(domains, tmp_path):
    TRACES.clear()
    summary = loop.train(loop_config(), tmp_path, two_stage_task(domains))
    assert summary["final_step"] == 10
    assert TRACES == {"small": 1, "large": 1}
    records = metrics_records(tmp_path)
    assert [r["size"] for r in records] == [8.0] * 4 + [16.0] * 6
    state, meta = saved_state(tmp_path)
    assert int(state["entered"]) == 1  # the second stage's entry ran once
    # every stream's position: 4 steps of the first stage's batch, 6 of the second's
    assert meta["data"]["streams"] == {"a": {"examples": 4 * 16 + 6 * 8},
                                       "b": {"examples": 4 * 8 + 6 * 16}}
    # images per step differ by stage; the speed counts what was read
    assert summary["images_per_s"] > 0


@pytest.mark.parametrize("stop_at", [2, 4, 7])  # in the first stage, at the boundary, the second
def test_resuming_anywhere_equals_an_uninterrupted_run_bitwise(domains, tmp_path, stop_at):
    loop.train(loop_config(), tmp_path / "straight", two_stage_task(domains))
    loop.train(loop_config(num_steps=stop_at), tmp_path / "resumed", two_stage_task(domains))
    summary = loop.train(loop_config(), tmp_path / "resumed", two_stage_task(domains))
    assert summary["start_step"] == stop_at
    straight, straight_meta = saved_state(tmp_path / "straight")
    resumed, resumed_meta = saved_state(tmp_path / "resumed")
    chex.assert_trees_all_equal(resumed, straight)
    assert resumed_meta["data"] == straight_meta["data"]
    # the history holds every step once, as the uninterrupted run's does
    assert ([r["step"] for r in metrics_records(tmp_path / "resumed")]
            == [r["step"] for r in metrics_records(tmp_path / "straight")])


def test_every_zero_means_never(domains, tmp_path):
    calls = []

    def action(state, step, writer, *, final=False):
        calls.append((step, final))

    config = loop_config(log_every=0, checkpoint_every=0)
    loop.train(config, tmp_path, two_stage_task(domains, periodic={"look": (0, action)}))
    assert calls == [(10, True)]  # only the end-of-run call
    assert [r["step"] for r in metrics_records(tmp_path)] == [10]  # only the end of the run
    checkpointer = Checkpointer(tmp_path, asynchronous=False)
    assert checkpointer.steps() == [10]  # only the final save
    checkpointer.close()


def test_checkpoints_of_the_one_stream_format_resume(domains, tmp_path):
    # Checkpoints written before streams were named counted the batches of the one stream.
    streams = loop.Streams(two_stage_task(domains).stages[:1], parallel.DataParallel())
    single = {"a": streams.consumed["a"]}
    streams.consumed = single
    streams.restore({"batches_consumed": 5, "seed": 0}, loop_config(batch_size=16))
    assert streams.consumed == {"a": 80}
