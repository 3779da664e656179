"""Checkpoints with Orbax: the whole state, the input position and the config, kept together.

`Checkpointer` wraps an Orbax `CheckpointManager` over ``<workdir>/checkpoints``. Saves are
asynchronous (the arrays are copied to the host before `save` returns, so the next step may
reuse their buffers) and atomic; the last N are kept. `restore_latest` resumes from the newest
readable checkpoint: an unreadable one is reported, moved to ``<workdir>/corrupt_checkpoints``
(never deleted) and the previous one is used. A checkpoint written with a different config is
refused unless the config allows the change.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from common_jax.errors import UserError

log = logging.getLogger(__name__)

# Settings that may change between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = frozenset({
    "num_steps", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
    "progress_bar", "allow_config_change", "parallel", "eval_every", "eval_batch_size",
    # The computation precision: the state stays float32 either way, so a run may resume in
    # the other one (and runs saved before the key existed computed in float32).
    "model.dtype",
    # Test-time augmentation changes how a trained network is evaluated, not the training.
    "tta_flip", "tta_translate",
})
# Config sections that only say how a run is measured (all of their keys may change, and
# checkpoints written before a section existed resume too).
RESUMABLE_SECTIONS = frozenset({"metrics"})


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict, current: dict) -> list[str]:
    """Human-readable differences that matter for resuming (ignores RESUMABLE_CHANGES and
    RESUMABLE_SECTIONS)."""
    a, b = flatten(saved), flatten(json.loads(json.dumps(current)))
    keys = sorted(k for k in set(a) | set(b)
                  if k not in RESUMABLE_CHANGES and k.split(".")[0] not in RESUMABLE_SECTIONS
                  and a.get(k) != b.get(k))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys]


class Checkpointer:
    """Saves and restores `{state, meta}` checkpoints in ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str | Path, *, keep: int = 3, asynchronous: bool = True):
        self.workdir = Path(workdir).resolve()
        self.directory = self.workdir / "checkpoints"
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous)
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options,
                                     item_names=("state", "meta"))

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

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at `step`, placed on the first local device, and its meta."""
        device = jax.local_devices()[0]
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                           sharding=jax.sharding.SingleDeviceSharding(device)),
            abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def restore_latest(self, abstract_state: Any, config: ml_collections.ConfigDict | None = None
                       ) -> tuple[Any, dict] | None:
        """The newest readable checkpoint as (state, meta), or None in an empty workdir.

        With `config`, refuses a checkpoint trained with another config unless
        ``config.allow_config_change``.
        """
        for step in reversed(self.steps()):
            try:
                meta = self.read_meta(step)
            except Exception as error:  # noqa: BLE001 - any failure to read means unusable
                self._set_aside(step, error)
                continue
            if config is not None:
                self._check_config(meta, config, step)
            try:
                return self.restore(step, abstract_state)
            except Exception as error:  # noqa: BLE001
                self._set_aside(step, error)
        return None

    def _check_config(self, meta: dict, config: ml_collections.ConfigDict, step: int) -> None:
        differences = config_differences(meta.get("config", {}), config.to_dict())
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


def restore_for_inference(workdir: str | Path, load_trainer) -> tuple[Any, Any, Any]:
    """(config, state, trainer module) from the latest checkpoint in workdir, for sampling.

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
        meta = checkpointer.read_meta(steps[-1])
        config = ml_collections.ConfigDict(meta["config"])
        trainer = load_trainer(config)
        abstract = jax.eval_shape(lambda: trainer.create_state(config))
        restored = checkpointer.restore_latest(abstract)
        if restored is None:
            raise UserError(f"no readable checkpoint in {workdir}")
        return config, restored[0], trainer
    finally:
        checkpointer.close()
