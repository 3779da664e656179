"""Checkpoints with Orbax: the whole state, the input position and the config, kept together.

`Checkpointer` wraps an Orbax `CheckpointManager` over ``<workdir>/checkpoints``. Saves are
asynchronous (the arrays are copied to the host before `save` returns, so the next step may
reuse their buffers) and atomic; the last N are kept.

`restore_latest` resumes from the newest checkpoint and tells three cases apart:

- unreadable (files missing or garbage): reported, moved to ``<workdir>/corrupt_checkpoints``
  (never deleted) and the previous checkpoint is used;
- written with a different config: refused unless the config allows the change or the changed
  keys are resumable (`CORE_RESUMABLE`, plus the keys the model family declares);
- incompatible (its arrays' paths, shapes or dtypes differ from the state the code builds,
  read from the saved tree metadata before any array is restored): `IncompatibleCheckpoint`,
  nothing on disk touched, unless a `migrate` function turns the saved tree into the new state.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from common_jax.errors import UserError

log = logging.getLogger(__name__)

# Settings the shared loop itself reads that may change between a run and its resumption
# without changing what is trained. A model family adds its own through `resumable`.
CORE_RESUMABLE = frozenset({
    "num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "progress_bar",
    "allow_config_change", "parallel",
})
SHOWN_DIFFERENCES = 3  # how many differences an error message lists


class IncompatibleCheckpoint(UserError):
    """A readable checkpoint whose arrays do not fit the state the current code builds."""


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def is_resumable(key: str, resumable: Iterable[str]) -> bool:
    """Whether dotted `key` is named by `resumable`, itself or through one of its sections."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in resumable for n in range(1, len(parts) + 1))


def config_differences(saved: dict, current: dict, resumable: Iterable[str] = frozenset()
                       ) -> list[str]:
    """Human-readable differences that matter for resuming.

    Keys in `CORE_RESUMABLE` or `resumable` (a key, or a section covering all of its keys)
    are ignored, also when an older saved config lacks them.
    """
    allowed = CORE_RESUMABLE | frozenset(resumable)
    a, b = flatten(saved), flatten(json.loads(json.dumps(current)))
    keys = sorted(k for k in set(a) | set(b)
                  if not is_resumable(k, allowed) and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys]


def array_spec(leaf: Any) -> str:
    """'float32[4,4,8,16]' for anything with a shape and dtype (arrays, Orbax metadata)."""
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        return type(leaf).__name__
    return f"{np.dtype(dtype).name}[{','.join(str(d) for d in shape)}]"


def tree_specs(tree: Any) -> dict[str, str]:
    """{'g.params.Conv_0.kernel': 'float32[...]'}, with the path names Orbax saves under."""
    return {".".join(path): array_spec(leaf)
            for path, leaf in ocp.tree.to_flat_dict(tree).items()}


def layout_differences(saved: Any, built: Any) -> list[str]:
    """How the saved tree's arrays differ from the built tree's, one entry per path, in the
    built tree's order (a state's parameters before its optimizer moments)."""
    a, b = tree_specs(saved), tree_specs(built)
    differences = []
    for path in [*b, *(path for path in a if path not in b)]:
        if path not in b:
            differences.append(f"{path}: saved {a[path]}, not built")
        elif path not in a:
            differences.append(f"{path}: not saved, built {b[path]}")
        elif a[path] != b[path]:
            differences.append(f"{path}: saved {a[path]}, built {b[path]}")
    return differences


def shortened(differences: list[str]) -> str:
    more = len(differences) - SHOWN_DIFFERENCES
    return "; ".join(differences[:SHOWN_DIFFERENCES]) + (f"; {more} more" if more > 0 else "")


def placed_like(abstract: Any, sharding: jax.sharding.Sharding) -> Any:
    """Restore targets: the shapes and dtypes of `abstract`, every array placed by `sharding`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


class Checkpointer:
    """Saves and restores `{state, meta}` checkpoints in ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str | Path, *, keep: int = 3, asynchronous: bool = True):
        self.workdir = Path(workdir).resolve()
        self.directory = self.workdir / "checkpoints"
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous)
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        # Handlers named up front, so the saved tree metadata can be read without a target.
        return ocp.CheckpointManager(self.directory, options=self._options, item_handlers={
            "state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an asynchronous save of `state` (a pytree of arrays) and JSON `meta`."""
        if step in self.manager.all_steps():
            return  # already saved (e.g. a final save right after a periodic one)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]

    def saved_tree(self, step: int) -> Any:
        """The saved state's tree of array metadata (paths, shapes, dtypes); no array is read."""
        metadata = self.manager.item_metadata(step)["state"]
        if metadata is None:
            raise FileNotFoundError(f"no state metadata in {self.directory / str(step)}")
        return metadata.tree

    def _read(self, step: int, target: Any) -> tuple[Any, dict]:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore(self, step: int, abstract_state: Any,
                sharding: jax.sharding.Sharding | None = None) -> tuple[Any, dict]:
        """The state at `step` and its meta, every array placed with `sharding` (default: the
        first local device). Raises `IncompatibleCheckpoint` if it does not fit `abstract_state`.
        """
        differences = layout_differences(self.saved_tree(step), abstract_state)
        if differences:
            raise self._incompatible(step, differences)
        return self._read(step, placed_like(abstract_state, sharding or default_sharding()))

    def restore_latest(self, abstract_state: Any,
                       config: ml_collections.ConfigDict | None = None, *,
                       resumable: Iterable[str] = frozenset(),
                       sharding: jax.sharding.Sharding | None = None,
                       migrate: Callable[[Any, dict], Any] | None = None
                       ) -> tuple[Any, dict] | None:
        """The newest readable checkpoint as (state, meta), or None in an empty workdir.

        With `config`, refuses a checkpoint trained with another config (keys in `resumable`
        and `CORE_RESUMABLE` aside) unless ``config.allow_config_change``. A checkpoint that
        does not fit `abstract_state` raises `IncompatibleCheckpoint`, or, with `migrate`, is
        restored as saved and passed through ``migrate(saved_tree, meta) -> state``.
        """
        sharding = sharding or default_sharding()
        for step in reversed(self.steps()):
            try:
                meta, saved = self.read_meta(step), self.saved_tree(step)
            except Exception as error:  # noqa: BLE001 - any failure to read means unusable
                self._set_aside(step, error)
                continue
            if config is not None:
                self._check_config(meta, config, step, resumable)
            differences = layout_differences(saved, abstract_state)
            if differences and migrate is None:
                raise self._incompatible(step, differences)
            target = saved if differences else abstract_state  # as saved, for `migrate`
            try:
                state, meta = self._read(step, placed_like(target, sharding))
            except Exception as error:  # noqa: BLE001 - the target fits, so the files are bad
                self._set_aside(step, error)
                continue
            if differences:
                state = self._migrated(step, migrate(state, meta), abstract_state, sharding)
            return state, meta
        return None

    def _incompatible(self, step: int, differences: list[str]) -> IncompatibleCheckpoint:
        return IncompatibleCheckpoint(
            f"the checkpoint at step {step} in {self.workdir} does not fit the state this code "
            f"builds ({shortened(differences)}); use a new --workdir, or migrate the checkpoint")

    def _migrated(self, step: int, state: Any, abstract_state: Any,
                  sharding: jax.sharding.Sharding) -> Any:
        differences = layout_differences(state, abstract_state)
        if differences:
            raise IncompatibleCheckpoint(
                f"migrating the checkpoint at step {step} in {self.workdir} gave a state that "
                f"still does not fit ({shortened(differences)}); fix the migration function")
        log.warning("migrated the checkpoint at step %d to the state this code builds", step)
        return jax.device_put(state, sharding)

    def _check_config(self, meta: dict, config: ml_collections.ConfigDict, step: int,
                      resumable: Iterable[str]) -> None:
        differences = config_differences(meta.get("config", {}), config.to_dict(), resumable)
        if not differences:
            return
        if config.get("allow_config_change", False):
            log.warning("resuming step %d despite config changes: %s", step,
                        "; ".join(differences))
            return
        raise UserError(
            f"{self.workdir} holds a checkpoint (step {step}) from a different config "
            f"({'; '.join(differences[:4])}{' ...' if len(differences) > 4 else ''}); use a "
            "new --workdir, or pass --config.allow_config_change=True to resume it anyway")

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves an unreadable checkpoint out of the manager's way, keeping its files."""
        aside = self.workdir / "corrupt_checkpoints" / str(step)
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(aside))
        log.warning("checkpoint at step %d is unreadable (%s: %s); moved it to %s and "
                    "falling back to the previous checkpoint", step, type(error).__name__,
                    str(error).splitlines()[0][:200] if str(error) else "", aside)
        self.manager.close()
        self.manager = self._open()


def restore_for_inference(workdir: str | Path, load_trainer,
                          step: int | None = None) -> tuple[Any, Any, Any]:
    """(config, state, trainer module) from the latest checkpoint in workdir (or the one saved
    at `step`), for sampling and scoring.

    `load_trainer(config)` returns the module with ``create_state(config)``.
    """
    no_checkpoint = UserError(f"no checkpoint in {Path(workdir).resolve() / 'checkpoints'}; "
                              f"train first with: python train.py --config ... --workdir {workdir}")
    if not (Path(workdir) / "checkpoints").is_dir():
        raise no_checkpoint  # before the manager, which would create the folders
    checkpointer = Checkpointer(workdir, asynchronous=False)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise no_checkpoint
        if step is not None and step not in steps:
            raise UserError(f"no checkpoint at step {step} in {workdir}; it holds steps "
                            f"{', '.join(map(str, steps))}: give one of them to --step")
        meta = checkpointer.read_meta(steps[-1] if step is None else step)
        config = ml_collections.ConfigDict(meta["config"])
        trainer = load_trainer(config)
        abstract = jax.eval_shape(lambda: trainer.create_state(config))
        if step is not None:
            return config, checkpointer.restore(step, abstract)[0], trainer
        restored = checkpointer.restore_latest(abstract)
        if restored is None:
            raise UserError(f"no readable checkpoint in {workdir}")
        return config, restored[0], trainer
    finally:
        checkpointer.close()
