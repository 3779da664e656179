"""Checkpoints: unreadable ones fall back, incompatible ones are refused untouched (or migrated),
resumable settings per family, restoring onto a sharding, and logged history kept."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common_jax.checkpoint import (
    CORE_RESUMABLE,
    Checkpointer,
    IncompatibleCheckpoint,
    config_differences,
)
from common_jax.errors import UserError
from common_jax.writers import RunWriter
from gans_jax.trainers import dcgan
from tests.helpers import smoke_config, tiny_digits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return tiny_digits(tmp_path_factory.mktemp("digits"))


def tiny_state(dtype=jnp.float32, **extra):
    return {"w": jnp.arange(6, dtype=dtype).reshape(2, 3), "b": jnp.ones(3, dtype), **extra}


def abstract(state):
    return jax.eval_shape(lambda: state)


def save_steps(workdir, state, steps=(1, 2), config=None):
    """Tiny checkpoints at `steps`, each meta holding the step and `config`."""
    checkpointer = Checkpointer(workdir, asynchronous=False)
    for step in steps:
        checkpointer.save(step, state, {"step": step, "config": config or {}})
    checkpointer.close()


def restore_latest(workdir, built, **kwargs):
    checkpointer = Checkpointer(workdir, asynchronous=False)
    try:
        return checkpointer.restore_latest(built, **kwargs)
    finally:
        checkpointer.close()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------- incompatible


def test_cli_refuses_a_checkpoint_of_another_width_and_touches_nothing(digits, tmp_path):
    dcgan.train_and_evaluate(smoke_config(digits), tmp_path)  # checkpoints at steps 3 and 6
    checkpoints = files(tmp_path / "checkpoints")
    metrics = (tmp_path / "metrics.jsonl").read_bytes()
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"),
         f"--config={ROOT / 'gans_jax' / 'configs' / 'dcgan_mnist.py'}:smoke",
         f"--workdir={tmp_path}", f"--config.data.path={digits}", "--config.model.g_width=16",
         "--config.allow_config_change=True"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"step 6 in {tmp_path}" in errors[0]
    assert "g.params.project.kernel: saved float32[100,784], built float32[100,1568]" in errors[0]
    assert errors[0].endswith("use a new --workdir, or migrate the checkpoint")
    assert files(tmp_path / "checkpoints") == checkpoints  # same step folders, same bytes
    assert not (tmp_path / "corrupt_checkpoints").exists()
    assert (tmp_path / "metrics.jsonl").read_bytes() == metrics


def test_a_dtype_change_is_incompatible_and_nothing_is_moved(tmp_path):
    save_steps(tmp_path, tiny_state())
    before = files(tmp_path / "checkpoints")
    with pytest.raises(IncompatibleCheckpoint,
                       match=r"step 2 .*w: saved float32\[2,3\], built bfloat16\[2,3\]"):
        restore_latest(tmp_path, abstract(tiny_state(jnp.bfloat16)))
    checkpointer = Checkpointer(tmp_path, asynchronous=False)
    with pytest.raises(IncompatibleCheckpoint, match="step 1 "):  # restore of one step too
        checkpointer.restore(1, abstract(tiny_state(jnp.bfloat16)))
    checkpointer.close()
    assert files(tmp_path / "checkpoints") == before
    assert not (tmp_path / "corrupt_checkpoints").exists()


def test_missing_and_extra_paths_are_named_on_one_line(tmp_path):
    save_steps(tmp_path, tiny_state())
    built = abstract({"w": jnp.zeros((2, 3)), "scale": jnp.zeros((3,), jnp.int32)})
    with pytest.raises(IncompatibleCheckpoint) as caught:
        restore_latest(tmp_path, built)
    message = str(caught.value)
    assert "scale: not saved, built int32[3]" in message
    assert "b: saved float32[3], not built" in message
    assert "\n" not in message and isinstance(caught.value, UserError)


def test_migrate_turns_the_saved_tree_into_the_new_state(tmp_path):
    save_steps(tmp_path, tiny_state(), config={"lr": 1})
    seen = {}

    def migrate(saved, meta):
        seen.update(saved=saved, meta=meta)
        return {**saved, "scale": jnp.full((3,), 2.0)}

    built = abstract(tiny_state(scale=jnp.zeros(3)))
    state, meta = restore_latest(tmp_path, built, migrate=migrate)
    assert seen["meta"] == meta == {"step": 2, "config": {"lr": 1}}
    np.testing.assert_array_equal(seen["saved"]["w"], np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(state["scale"], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(state["w"], seen["saved"]["w"])
    with pytest.raises(IncompatibleCheckpoint, match="fix the migration"):
        restore_latest(tmp_path, built, migrate=lambda saved, meta: saved)
    assert Checkpointer(tmp_path, asynchronous=False).steps() == [1, 2]


# ------------------------------------------------------------------------------ unreadable


def garble(step_dir: Path, keep=lambda path: False):
    for path in step_dir.rglob("*"):
        if path.is_file() and not keep(path):
            path.write_bytes(b"garbage")


@pytest.mark.parametrize("damage", [
    lambda d: garble(d / "state"),
    # the tree metadata still reads (so the layout fits); the arrays themselves are garbage
    lambda d: garble(d / "state", keep=lambda p: p.name in ("_METADATA", "_sharding")),
    lambda d: garble(d / "meta"),
    lambda d: [p.unlink() for p in (d / "state").rglob("*") if p.is_file()],
], ids=["state", "arrays-only", "meta", "state-files-missing"])
def test_an_unreadable_checkpoint_is_set_aside_and_the_previous_used(tmp_path, damage, caplog):
    save_steps(tmp_path, tiny_state())
    damage(tmp_path / "checkpoints" / "2")
    state, meta = restore_latest(tmp_path, abstract(tiny_state()))
    assert meta["step"] == 1
    np.testing.assert_array_equal(state["w"], np.arange(6.0).reshape(2, 3))
    assert (tmp_path / "corrupt_checkpoints" / "2").is_dir()
    assert "unreadable" in caplog.text


# ---------------------------------------------------------------------- resumable settings


def test_only_the_loops_own_keys_are_resumable_by_default():
    saved = {"num_steps": 10, "log_every": 1, "eval_every": 5, "model": {"dtype": "float32"}}
    current = {"num_steps": 20, "log_every": 2, "eval_every": 9, "model": {"dtype": "bfloat16"}}
    assert "num_steps" in CORE_RESUMABLE and "eval_every" not in CORE_RESUMABLE
    assert config_differences(saved, current) == [
        "eval_every: 5 -> 9", "model.dtype: 'float32' -> 'bfloat16'"]
    assert config_differences(saved, current, resumable={"eval_every", "model.dtype"}) == []


def test_a_resumable_section_covers_its_keys_and_its_absence():
    older = {"model": {"g_width": 8}}  # written before the family added a `metrics` section
    current = {"model": {"g_width": 8}, "metrics": {"every": 3, "fid": {"samples": 10}}}
    assert config_differences(older, current, resumable=["metrics"]) == []
    assert config_differences(older, current, resumable=["metric"])  # a name, not a prefix
    assert config_differences({"model": {"dtype_x": 1}}, {"model": {"dtype_x": 2}},
                              resumable=["model.dtype"]) == ["model.dtype_x: 1 -> 2"]


def test_restore_latest_takes_the_familys_resumable_keys(tmp_path):
    save_steps(tmp_path, tiny_state(), config={"eval_every": 5, "num_steps": 2})
    config = ml_collections.ConfigDict({"eval_every": 10, "num_steps": 4,
                                        "allow_config_change": False})
    with pytest.raises(UserError, match=r"different config \(eval_every: 5 -> 10\)"):
        restore_latest(tmp_path, abstract(tiny_state()), config=config)
    _, meta = restore_latest(tmp_path, abstract(tiny_state()), config=config,
                             resumable=("eval_every",))
    assert meta["step"] == 2


# ------------------------------------------------------------------------------- placement


def test_restore_places_every_array_with_the_given_sharding(tmp_path):
    save_steps(tmp_path, tiny_state(step=jnp.int32(7)))
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec())
    built = abstract(tiny_state(step=jnp.int32(0)))
    state, _ = restore_latest(tmp_path, built, sharding=replicated)
    for leaf in jax.tree.leaves(state):
        assert leaf.sharding.is_equivalent_to(replicated, leaf.ndim)
        assert len(leaf.sharding.device_set) == 8
    assert int(state["step"]) == 7
    checkpointer = Checkpointer(tmp_path, asynchronous=False)
    state, _ = checkpointer.restore(1, built)  # default: the first local device
    checkpointer.close()
    assert all(leaf.sharding.device_set == {jax.local_devices()[0]}
               for leaf in jax.tree.leaves(state))
    migrated, _ = restore_latest(tmp_path, abstract(tiny_state(step=jnp.int32(0), x=jnp.ones(1))),
                                 sharding=replicated,
                                 migrate=lambda saved, meta: {**saved, "x": np.ones(1, np.float32)})
    assert all(len(leaf.sharding.device_set) == 8 for leaf in jax.tree.leaves(migrated))


# --------------------------------------------------------------------------------- history


def write_history(workdir, steps):
    writer = RunWriter(workdir, tensorboard=False)
    for step in steps:
        writer.write_scalars(step, {"loss": float(step)})
    writer.close()


def test_history_is_kept_up_to_the_restored_step(tmp_path):
    write_history(tmp_path, [1, 2, 3, 4])
    writer = RunWriter(tmp_path, tensorboard=False)
    writer.resume_history(2)
    assert writer.history == {"loss": [(1, 1.0), (2, 2.0)]}
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").open()]
    assert steps == [1, 2]


def test_a_fresh_start_moves_the_history_aside(tmp_path, caplog):
    write_history(tmp_path, [1, 2])
    first = (tmp_path / "metrics.jsonl").read_bytes()
    writer = RunWriter(tmp_path, tensorboard=False)
    with caplog.at_level(logging.WARNING):
        writer.resume_history(None)
    assert writer.history == {} and not (tmp_path / "metrics.jsonl").exists()
    assert (tmp_path / "metrics.before_restart.1.jsonl").read_bytes() == first
    assert "metrics.before_restart.1.jsonl" in caplog.text
    writer.write_scalars(1, {"loss": 9.0})  # the new run logs into a fresh file
    RunWriter(tmp_path, tensorboard=False).resume_history(None)  # and again: a new name
    assert (tmp_path / "metrics.before_restart.1.jsonl").read_bytes() == first
    assert json.loads((tmp_path / "metrics.before_restart.2.jsonl").read_text())["loss"] == 9.0
