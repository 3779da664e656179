"""The training loop every model family shares.

`train(config, workdir, task)`: input pipeline -> state (restored from the workdir's latest
checkpoint, else fresh) -> compiled data-parallel step -> loop with periodic actions (metrics,
the task's own actions such as sample grids, checkpoints) -> final save, plot and summary.json.
A model family supplies a `Task`: how to create its state, its per-device step, its periodic
actions and any extra summary.json fields. SIGTERM/SIGINT end the run cleanly after a
checkpoint; non-finite metrics stop it without saving the bad state.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from common_jax import data as data_lib
from common_jax.checkpoint import Checkpointer
from common_jax.errors import UserError
from common_jax.parallel import DataParallel
from common_jax.writers import RunWriter

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """Metrics became NaN or infinite; the last good checkpoint is kept."""


@dataclasses.dataclass
class Task:
    """What a model family gives the shared loop."""

    create_state: Callable[[], Any]  # fresh host state, deterministic from the config's seed
    train_step: Callable  # per-device (state, batch) -> (state, metrics); metrics pmean-ed
    # name -> (every_n_steps, fn(host_state, step, writer, final=...)); also run at the end
    periodic: dict[str, tuple[int, Callable]] = dataclasses.field(default_factory=dict)
    # called once with the data source before training (e.g. to keep reference images)
    prepare: Callable[[data_lib.ImageSource], None] | None = None
    progress_metrics: tuple[str, ...] = ()  # shown in the progress bar
    plot_metrics: tuple[str, ...] = ()  # drawn in losses.png
    # extra summary.json fields, e.g. filled by the final periodic action (read after it ran)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.received: str | None = None
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

    def __init__(self, *, start: int, total: int, images_per_step: int, enabled: bool,
                 names: tuple[str, ...], log_every: int):
        self.images_per_step, self.names, self.log_every = images_per_step, names, log_every
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                            smoothing=0.1)
        self._last_time, self._last_step, self.rate = time.perf_counter(), start, 0.0

    def update(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if now - self._last_time > 1.0 or step % self.log_every == 0:
            self.rate = (step - self._last_step) / (now - self._last_time)
            self._last_time, self._last_step = now, step
            shown = {k: f"{metrics[k]:.3f}" for k in self.names if k in metrics}
            if self.bar is not None:
                self.bar.set_postfix(img_s=f"{self.rate * self.images_per_step:.0f}", **shown)
            elif step % self.log_every == 0:
                log.info("step %d: %.2f steps/s, %.0f images/s, %s", step, self.rate,
                             self.rate * self.images_per_step, shown)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def train(config: ml_collections.ConfigDict, workdir: str | Path, task: Task) -> dict:
    """Trains `task` to ``config.num_steps`` in `workdir`, resuming if it holds a checkpoint."""
    workdir = Path(workdir).resolve()
    primary = jax.process_index() == 0

    # ---- devices and data --------------------------------------------------------------
    dp = DataParallel(config.parallel)
    local_batch = dp.check_batch_size(config.batch_size)
    source = data_lib.load_source(config.data, split=config.data.split)
    log.info("data: %s, %d examples; %d devices (%s), mode %s, global batch %d",
                 source.name, source.num_examples, dp.num_devices, jax.devices()[0].platform,
                 dp.mode, config.batch_size)

    if task.prepare is not None:
        task.prepare(source)

    # ---- state: restore the latest checkpoint or start fresh ---------------------------
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    abstract_state = jax.eval_shape(task.create_state)
    restored = checkpointer.restore_latest(abstract_state, config)
    if restored is None:
        state, start_step, start_batch = task.create_state(), 0, 0
    else:
        state, meta = restored
        start_step = int(meta["step"])
        start_batch = int(meta["data"]["batches_consumed"])
        log.info("resuming from the checkpoint at step %d", start_step)
    last_saved = start_step if restored is not None else None

    writer = RunWriter(workdir, primary=primary)
    writer.resume_history(start_step)
    if primary:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    batches = data_lib.make_train_iterator(
        source, batch_size=local_batch, image_size=config.model.image_size,
        channels=config.model.channels, seed=config.seed, start_batch=start_batch,
        process_index=jax.process_index(), process_count=jax.process_count(),
        augment=config.data.get("augment", "none"))

    def save(step: int, device_state) -> None:
        nonlocal last_saved
        meta = {"step": step, "data": {"batches_consumed": start_batch + step - start_step,
                                       "seed": config.seed},
                "config": config.to_dict()}
        checkpointer.save(step, dp.get_state(device_state), json.loads(json.dumps(meta)))
        last_saved = step

    # ---- the loop -----------------------------------------------------------------------
    step_fn = dp.compile(task.train_step)
    device_state = dp.put_state(state)
    del state
    progress = Progress(start=start_step, total=config.num_steps,
                        images_per_step=config.batch_size, enabled=config.progress_bar and primary,
                        names=task.progress_metrics, log_every=config.log_every)
    window: list[dict[str, float]] = []
    pending = None  # (step, device metrics) of the step before, read after the next dispatch
    timing = {"wall_start": time.time(), "first_step_done": None, "steps_timed": 0}
    step = start_step
    stopped_by = None

    def finish_step(done_step: int, device_metrics) -> None:
        metrics = dp.get_metrics(device_metrics)  # waits for that step only
        check_finite(done_step, metrics, last_saved, workdir)
        if timing["first_step_done"] is None:
            timing["first_step_done"] = time.perf_counter()  # excludes compilation
            timing["first_timed_step"] = done_step
        window.append(metrics)
        progress.update(done_step, metrics)
        if done_step % config.log_every == 0 or done_step == config.num_steps:
            means = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
            writer.write_scalars(done_step, means)
            window.clear()

    try:
        with StopSignal() as stop:
            while step < config.num_steps and not stop.received:
                batch = dp.put_batch(next(batches))
                device_state, device_metrics = step_fn(device_state, batch)
                step += 1
                if pending is not None:
                    finish_step(*pending)
                pending = (step, device_metrics)
                periodic_due = [name for name, (every, _) in task.periodic.items()
                                if every and step % every == 0 and step < config.num_steps]
                if step % config.checkpoint_every == 0 or periodic_due:
                    finish_step(*pending)  # never save or show a state not yet checked
                    pending = None
                    if step % config.checkpoint_every == 0:
                        save(step, device_state)
                    for name in periodic_due:
                        task.periodic[name][1](dp.get_state(device_state), step, writer)
            if pending is not None:
                finish_step(*pending)
            stopped_by = stop.received
        end_time = time.perf_counter()
        save(step, device_state)
        if stopped_by:
            log.warning("stopped by %s at step %d; checkpoint saved in %s; run the same "
                            "command to resume", stopped_by, step, workdir)
        else:
            host_state = dp.get_state(device_state)
            for _, action in task.periodic.values():
                action(host_state, step, writer, final=True)
    finally:
        progress.close()
        checkpointer.close()
        writer.flush()

    # ---- summary ------------------------------------------------------------------------
    timed_steps = step - timing.get("first_timed_step", step)
    timed_seconds = end_time - timing["first_step_done"] if timing["first_step_done"] else 0.0
    summary = {
        "config": config.to_dict(),
        "start_step": start_step, "final_step": step, "stopped_by": stopped_by,
        "wall_time_s": round(time.time() - timing["wall_start"], 2),
        "steps_per_s": round(timed_steps / timed_seconds, 3) if timed_seconds > 0 else None,
        "images_per_s": (round(timed_steps * config.batch_size / timed_seconds, 1)
                         if timed_seconds > 0 else None),
        "final_metrics": {k: v[-1][1] for k, v in writer.history.items()},
        "devices": dp.num_devices, "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind, "parallel": dp.mode,
        "jax_version": jax.__version__, "host": platform.node(),
        "checkpoint_step": last_saved,
    }
    summary.update(task.summary)
    if primary:
        writer.plot(task.plot_metrics)
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    writer.close()
    return summary
