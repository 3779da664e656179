"""Run outputs: TensorBoard scalars and images, a metrics file, PNG image grids, loss plots.

metrics.jsonl is a run's logged history. A resumed run keeps it up to the restored step; a run
that starts afresh in a workdir with history moves the old file aside instead of overwriting it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def image_grid(images: np.ndarray, *, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, H, W, C] in [-1, 1] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, *, scale: int = 1) -> Path:
    """Writes images in [-1, 1] as one PNG grid; small images can be enlarged by `scale`."""
    grid = image_grid(images)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def plot_history(history: dict[str, list[tuple[int, float]]], names, path: str | Path) -> Path:
    """A PNG of the named metrics against the step."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        if history.get(name):
            steps, values = zip(*history[name], strict=True)
            # A sparse series (one final evaluation) would draw no line at all: mark its points.
            ax.plot(steps, values, label=name, marker="o" if len(steps) <= 20 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


class RunWriter:
    """Writes a run's metrics (TensorBoard + metrics.jsonl) and images under its workdir."""

    def __init__(self, workdir: str | Path, *, tensorboard: bool = True, primary: bool = True):
        self.workdir = Path(workdir)
        self.primary = primary  # only the first process writes files in a multi-host run
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._tb = None
        if primary:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from flax.metrics import tensorboard as flax_tb

                self._tb = flax_tb.SummaryWriter(str(self.workdir / "tensorboard"))

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.history.setdefault(name, []).append((step, float(value)))
        if not self.primary:
            return
        with open(self.workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        if self._tb:
            for name, value in scalars.items():
                self._tb.scalar(name, value, step)

    def write_image_grid(self, step: int, name: str, images: np.ndarray, *,
                         final: bool = False) -> Path | None:
        """Saves samples/<name>_<step>.png (and <name>_final.png at the end)."""
        if not self.primary:
            return None
        scale = max(1, 128 // images.shape[1])  # keep 28x28 digits visible in the PNG
        path = save_image_grid(images, self.workdir / "samples" / f"{name}_{step:07d}.png",
                               scale=scale)
        if final:
            save_image_grid(images, self.workdir / f"{name}_final.png", scale=scale)
        if self._tb:
            self._tb.image(name, image_grid(images)[None], step)
        return path

    def plot(self, names, filename: str = "losses.png") -> Path | None:
        if not self.primary or not any(self.history.get(n) for n in names):
            return None
        return plot_history(self.history, names, self.workdir / filename)

    def resume_history(self, step: int | None) -> None:
        """Reloads metrics.jsonl up to `step`, the checkpoint a resumed run starts from.

        Records after it are dropped from the file: the resumed run writes them again. With
        `step` None (nothing restored, the run starts afresh) earlier records are moved aside.
        """
        path = self.workdir / "metrics.jsonl"
        if not self.primary or not path.exists():
            return
        if step is None:
            self._set_history_aside(path)
            return
        kept = [line for line in path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
        for line in kept:
            record = json.loads(line)
            record_step = record.pop("step")
            for name, value in record.items():
                self.history.setdefault(name, []).append((record_step, value))

    def _set_history_aside(self, path: Path) -> None:
        """Renames a previous run's metrics.jsonl to an unused name beside it, keeping it."""
        if not path.read_text().strip():
            return  # nothing logged: the new run may append to it
        n = 1
        while (aside := path.with_name(f"metrics.before_restart.{n}.jsonl")).exists():
            n += 1
        path.rename(aside)
        log.warning("starting afresh in %s, which holds logged metrics without a checkpoint to "
                    "resume; moved them to %s", self.workdir, aside)

    def flush(self) -> None:
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        if self._tb:
            self._tb.close()
