"""The training loop every model family shares: named data streams, stages, periodic actions.

`train(config, workdir, task)` restores the workdir's latest checkpoint (or creates the state),
then runs the task's stages in order. A `Stage` fixes the shapes of a span of training: its
data `Stream`s (each a named source with its own batch size, image size, augmentation and
order) and its per-device step. When a stage begins the loop builds that stage's input
pipelines and compiles its step once; within it, every step takes one batch from every stream.
Periodic actions (metrics, the task's sample grids or evaluations, checkpoints) run every N
steps; N = 0 means never (the end of the run still saves, logs and runs every action once).

A checkpoint records how many examples every stream has consumed, so a resumed run reads
exactly the batches an uninterrupted run would, in the middle of a stage too. The state's tree
is the same in every stage (a stage may transform the state when it begins, keeping the tree).
SIGTERM/SIGINT end the run cleanly after a checkpoint; non-finite metrics stop it without
saving the bad state.

A model family supplies a `Task`; a task with one stream and one stage (the DCGAN, the
classifiers) builds it with `single_stage`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from common_jax import config_utils, parallel
from common_jax import data as data_lib
from common_jax.checkpoint import Checkpointer
from common_jax.errors import UserError
from common_jax.parallel import DataParallel
from common_jax.writers import RunWriter

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """Metrics became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass(frozen=True)
class Stream:
    """One named source of training batches, with its own order and epochs."""

    data: Any  # a config `data` section (path / tfds_name ...), as `data.load_source` reads it
    batch_size: int  # global: over all devices and processes
    image_size: int
    channels: int
    split: str = "train"
    augment: str = "none"  # a name in `common_jax.data.AUGMENTATIONS`
    seed: int = 0  # the order of its examples and its augmentation draws
    load_size: int | None = None  # "resize_crop*" augmentations: loaded at this size, cropped


@dataclasses.dataclass(frozen=True)
class Stage:
    """A span of training with fixed shapes, compiled once.

    `train_step` is per device: ``(state, batch) -> (state, metrics)`` with metrics pmean-ed;
    `batch` is the stream's batch when the stage has one stream, else ``{name: batch}``.
    `enter`, when given, transforms the host state when the stage begins (at its first step,
    whether the run got there or resumed there); it must keep the state's tree.
    """

    name: str
    num_steps: int  # the stage's length; the last stage runs on to config.num_steps
    train_step: Callable
    streams: Mapping[str, Stream]
    enter: Callable[[Any], Any] | None = None

    @property
    def images_per_step(self) -> int:
        return sum(s.batch_size for s in self.streams.values())


@dataclasses.dataclass
class Task:
    """What a model family gives the shared loop."""

    create_state: Callable[[], Any]  # fresh host state, deterministic from the config's seed
    stages: Sequence[Stage]
    # name -> (every_n_steps, fn(host_state, step, writer, final=...)); also run at the end
    periodic: dict[str, tuple[int, Callable]] = dataclasses.field(default_factory=dict)
    # called once before training with {stream name: data source} (e.g. to check labels)
    prepare: Callable[[dict[str, data_lib.ImageSource]], None] | None = None
    progress_metrics: tuple[str, ...] = ()  # shown in the progress bar
    plot_metrics: tuple[str, ...] = ()  # drawn in losses.png
    # extra summary.json fields, e.g. filled by the final periodic action (read after it ran)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    # config keys (or whole sections) of this family that may change when a run resumes
    resumable: frozenset[str] = frozenset()
    # (saved state restored without a target, meta) -> state, for checkpoints of another tree
    migrate: Callable[[Any, dict], Any] | None = None
    # dotted config key -> its valid values, checked before any data is read
    choices: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)


def single_stage(config: ml_collections.ConfigDict, train_step: Callable) -> list[Stage]:
    """The one stage of a task with one stream, "train": ``config.data`` (its split and
    augmentation) at ``config.model``'s image size and channels, ``config.batch_size``."""
    stream = Stream(data=config.data, batch_size=config.batch_size,
                    image_size=config.model.image_size, channels=config.model.channels,
                    split=config.data.get("split", "train"),
                    augment=config.data.get("augment", "none"), seed=config.seed)
    return [Stage(name="train", num_steps=config.num_steps, train_step=train_step,
                  streams={"train": stream})]


def stage_at(stages: Sequence[Stage], step: int) -> tuple[int, int]:
    """(index of the stage that runs step `step` + 1, the step that stage starts at)."""
    start = 0
    for index, stage in enumerate(stages):
        if step < start + stage.num_steps or index == len(stages) - 1:
            return index, start
        start += stage.num_steps
    raise ValueError("a task needs at least one stage")


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.received: str | None = None  # the signal this process received
        self.stopped = False  # the job stops: this process or another received one
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Progress:
    """A tqdm bar with steps/s, images/s, chosen metrics and ETA; log lines without a bar."""

    def __init__(self, *, start: int, total: int, enabled: bool, names: tuple[str, ...],
                 log_every: int):
        self.names, self.log_every = names, log_every
        self.images_per_step = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                            smoothing=0.1)
        self._last_time, self._last_step, self.rate = time.perf_counter(), start, 0.0

    def update(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        due = is_due(step, self.log_every)
        if now - self._last_time > 1.0 or due:
            self.rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
            self._last_time, self._last_step = now, step
            shown = {k: f"{metrics[k]:.3f}" for k in self.names if k in metrics}
            if self.bar is not None:
                self.bar.set_postfix(img_s=f"{self.rate * self.images_per_step:.0f}", **shown)
            elif due:
                log.info("step %d: %.2f steps/s, %.0f images/s, %s", step, self.rate,
                         self.rate * self.images_per_step, shown)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stopping(step: int, stop: StopSignal, every: int = 10) -> bool:
    """Whether the run stops before the next step. Across processes the decision is taken
    together every `every` steps (a process that stopped alone would leave the others waiting
    in the next step's collectives); one process decides alone, at once."""
    if stop.stopped:
        return True
    if jax.process_count() == 1:
        stop.stopped = stop.received is not None
    elif step % every == 0:
        stop.stopped = parallel.any_process(stop.received is not None)
    return stop.stopped


def is_due(step: int, every: int) -> bool:
    """Whether a periodic action runs after `step`; every = 0 means never."""
    return bool(every) and step % every == 0


def check_finite(step: int, metrics: dict[str, float], last_saved: int | None,
                 workdir: Path) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad or metrics.get("finite", 1.0) < 1.0:
        where = (f"the last good checkpoint is step {last_saved} in {workdir}"
                 if last_saved is not None else "no checkpoint was saved before it")
        raise TrainingDiverged(
            f"training diverged at step {step}: non-finite "
            f"{', '.join(bad) if bad else 'parameters'}; {where}; lower the learning rates "
            "(--config.optimizer.*) and run again to resume from that checkpoint")


class Streams:
    """The data streams of a run: sources loaded once, pipelines per stage, positions."""

    def __init__(self, stages: Sequence[Stage], dp: DataParallel):
        self.dp = dp
        self.sources: dict[str, data_lib.ImageSource] = {}
        for stage in stages:
            for name, stream in stage.streams.items():
                dp.check_batch_size(stream.batch_size)  # refused before any data is read
                if name not in self.sources:
                    self.sources[name] = data_lib.load_source(stream.data, split=stream.split)
        # Global examples each stream has handed out since the start of training.
        self.consumed = {name: 0 for name in self.sources}

    def restore(self, meta_data: dict, config: ml_collections.ConfigDict) -> None:
        """Positions from a checkpoint's meta (older checkpoints counted batches of one)."""
        if "streams" in meta_data:
            for name, position in meta_data["streams"].items():
                if name in self.consumed:
                    self.consumed[name] = int(position["examples"])
        elif "batches_consumed" in meta_data and len(self.consumed) == 1:
            (name,) = self.consumed
            self.consumed[name] = int(meta_data["batches_consumed"]) * config.batch_size

    def meta(self) -> dict:
        return {"streams": {name: {"examples": n} for name, n in self.consumed.items()}}

    def iterators(self, stage: Stage) -> dict[str, Iterator[dict[str, np.ndarray]]]:
        """This process's rows of every stream's batches in `stage`, from the current positions
        (every process follows one global order, so any process count reads the same data)."""
        count, index = jax.process_count(), jax.process_index()
        return {
            name: data_lib.make_train_iterator(
                self.sources[name], batch_size=stream.batch_size // count,
                image_size=stream.image_size, channels=stream.channels, seed=stream.seed,
                start_example=self.consumed[name], process_index=index,
                process_count=count, augment=stream.augment, load_size=stream.load_size)
            for name, stream in stage.streams.items()}

    def next_batch(self, stage: Stage, iterators: dict) -> Any:
        """One batch of every stream, placed on the devices; advances the positions."""
        batches = {}
        for name, stream in stage.streams.items():
            batches[name] = self.dp.put_batch(next(iterators[name]))
            self.consumed[name] += stream.batch_size
        return next(iter(batches.values())) if len(batches) == 1 else batches


def train(config: ml_collections.ConfigDict, workdir: str | Path, task: Task) -> dict:
    """Trains `task` to ``config.num_steps`` in `workdir`, resuming if it holds a checkpoint."""
    workdir = Path(workdir).resolve()
    primary = jax.process_index() == 0
    config_utils.check_choices(config, task.choices)  # train.py checked them too; Python
    config_utils.check_counts(config)  # callers get the same one-line errors

    # ---- devices and data --------------------------------------------------------------
    dp = DataParallel(config.parallel)
    streams = Streams(task.stages, dp)
    for name, source in streams.sources.items():
        log.info("data '%s': %s, %d examples", name, source.name, source.num_examples)
    log.info("%d devices (%s) in %d process(es), mode %s", dp.num_devices,
             jax.devices()[0].platform, jax.process_count(), dp.mode)
    if task.prepare is not None:
        task.prepare(streams.sources)

    # ---- state: restore the latest checkpoint or start fresh ---------------------------
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore_latest(
            jax.eval_shape(task.create_state), config, resumable=task.resumable,
            sharding=dp.replicated, migrate=task.migrate)
    except BaseException:
        checkpointer.close()
        raise
    if restored is None:
        state, start_step = task.create_state(), 0
    else:
        state, meta = restored
        start_step = int(meta["step"])
        streams.restore(meta.get("data", {}), config)
        log.info("resuming from the checkpoint at step %d", start_step)
    last_saved = start_step if restored is not None else None

    writer = RunWriter(workdir, primary=primary)
    writer.resume_history(start_step if restored is not None else None)
    if primary:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    def save(step: int, device_state) -> None:
        nonlocal last_saved
        meta = {"step": step, "data": {**streams.meta(), "seed": config.seed},
                "config": config.to_dict()}
        checkpointer.save(step, dp.get_state(device_state), json.loads(json.dumps(meta)))
        last_saved = step

    # ---- the loop -----------------------------------------------------------------------
    device_state = dp.put_state(state)
    del state
    progress = Progress(start=start_step, total=config.num_steps,
                        enabled=config.progress_bar and primary, names=task.progress_metrics,
                        log_every=config.log_every)
    window: list[dict[str, float]] = []
    pending = None  # (step, device metrics) of the step before, read after the next dispatch
    # images: handed to the devices so far; first_images: by the first finished (timed) step
    timing = {"wall_start": time.time(), "first_step_done": None, "images": 0}
    step = start_step
    stopped_by = None

    def finish_step(done_step: int, device_metrics, images_so_far: int) -> None:
        metrics = dp.get_metrics(device_metrics)  # waits for that step only
        check_finite(done_step, metrics, last_saved, workdir)
        if timing["first_step_done"] is None:
            timing["first_step_done"] = time.perf_counter()  # excludes compilation
            timing["first_timed_step"] = done_step
            timing["first_images"] = images_so_far
        window.append(metrics)
        progress.update(done_step, metrics)
        if is_due(done_step, config.log_every) or done_step == config.num_steps:
            means = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
            writer.write_scalars(done_step, means)
            window.clear()

    try:
        with StopSignal() as stop:
            while step < config.num_steps and not stopping(step, stop):
                index, stage_start = stage_at(task.stages, step)
                stage = task.stages[index]
                stage_end = (config.num_steps if index == len(task.stages) - 1
                             else min(stage_start + stage.num_steps, config.num_steps))
                if step == stage_start and stage.enter is not None:
                    device_state = dp.put_state(stage.enter(dp.local_state(device_state)))
                log.info("stage '%s' (%d of %d): steps %d to %d", stage.name, index + 1,
                         len(task.stages), step + 1, stage_end)
                step_fn = dp.compile(stage.train_step)  # once per stage
                iterators = streams.iterators(stage)
                progress.images_per_step = stage.images_per_step
                while step < stage_end and not stopping(step, stop):
                    batch = streams.next_batch(stage, iterators)
                    device_state, device_metrics = step_fn(device_state, batch)
                    step += 1
                    timing["images"] += stage.images_per_step
                    if pending is not None:
                        finish_step(*pending)
                    pending = (step, device_metrics, timing["images"])
                    periodic_due = [name for name, (every, _) in task.periodic.items()
                                    if is_due(step, every) and step < config.num_steps]
                    checkpoint_due = is_due(step, config.checkpoint_every)
                    if checkpoint_due or periodic_due:
                        finish_step(*pending)  # never save or show a state not yet checked
                        pending = None
                        if checkpoint_due:
                            save(step, device_state)
                        for name in periodic_due:
                            task.periodic[name][1](dp.local_state(device_state), step, writer)
            if pending is not None:
                finish_step(*pending)
            stopped_by = stop.received or ("another process" if stop.stopped else None)
        end_time = time.perf_counter()
        save(step, device_state)
        if stopped_by:
            log.warning("stopped by %s at step %d; checkpoint saved in %s; run the same "
                        "command to resume", stopped_by, step, workdir)
        else:
            host_state = dp.local_state(device_state)
            for _, action in task.periodic.values():
                action(host_state, step, writer, final=True)
    finally:
        progress.close()
        checkpointer.close()
        writer.flush()

    # ---- summary ------------------------------------------------------------------------
    summary = run_summary(config, dp, writer, timing, end_time, start_step=start_step,
                          step=step, stopped_by=stopped_by, last_saved=last_saved)
    summary.update(task.summary)
    if primary:
        writer.plot(task.plot_metrics)
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    writer.close()
    return summary


def run_summary(config, dp: DataParallel, writer: RunWriter, timing: dict, end_time: float, *,
                start_step: int, step: int, stopped_by: str | None,
                last_saved: int | None) -> dict:
    """summary.json's common fields: steps, speed (compilation excluded), final metrics."""
    timed_steps = step - timing.get("first_timed_step", step)
    timed_seconds = end_time - timing["first_step_done"] if timing["first_step_done"] else 0.0
    # Images after the first finished step (the window the speed is measured over).
    timed_images = timing["images"] - timing.get("first_images", timing["images"])
    return {
        "config": config.to_dict(),
        "start_step": start_step, "final_step": step, "stopped_by": stopped_by,
        "wall_time_s": round(time.time() - timing["wall_start"], 2),
        "steps_per_s": round(timed_steps / timed_seconds, 3) if timed_seconds > 0 else None,
        "images_per_s": (round(timed_images / timed_seconds, 1)
                         if timed_seconds > 0 else None),
        "final_metrics": {k: v[-1][1] for k, v in writer.history.items()},
        "devices": dp.num_devices, "processes": jax.process_count(),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind, "parallel": dp.mode,
        "jax_version": jax.__version__, "host": platform.node(),
        "checkpoint_step": last_saved,
    }
