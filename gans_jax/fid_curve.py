"""Inception FID against training steps for one or more GAN runs, beside published figures.

    python -m gans_jax.fid_curve RUN_DIR [RUN_DIR ...] --out docs/dcgan_cifar10_fid.png
        [--label NAME ...] [--reference "LABEL=FID" ...] [--no-published] [--x g_updates]

Each run's `metrics.jsonl` gives the curve (two when the run has a weight average of G: its
EMA generator's and, from the `raw_` scores, the raw generator's): its `inception_fid` entries
by step (the periodic scores and, at the last step, the final one) and any
`eval_inception_fid` (`eval_raw_inception_fid`) entries written by `train.py eval [--noema]`,
e.g. of checkpoints saved during the run (`--step`) scored on more samples than the periodic
scores. The number of generated images behind
each point comes from the run's `config.json` (`metrics.periodic_num_samples`) and, for the
final and eval scores, from the protocol in `summary.json`; FID depends on it (fewer samples
score higher), so the legend says it. A score whose row says it was made on another count
(`inception_samples`), such as the final score of a run later resumed with more steps, joins
the eval scores. `--x g_updates` divides the steps by the run's
`n_critic` (D updates per G update), the unit Mimicry and StudioGAN count their steps in.

The published CIFAR-10 DCGAN figures drawn by default (`PUBLISHED`; docs/dcgan.md has the
sources) are horizontal lines labelled with their own step counts and protocols: different
networks, sample counts and reference splits from ours, so they place our curve, they do not
rank it. Beside them, StudioGAN's logged training curve of the same CNN (`STUDIOGAN_LOG`, 10k
samples against the test split as we score) is drawn at its G updates with `--x g_updates`,
at its D updates (twice as many) otherwise, as far as our curves reach. Prints one line per
point and writes the PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common_jax.errors import UserError

# Published CIFAR-10 DCGAN FIDs: (label, FID). Where each was read: docs/dcgan.md.
PUBLISHED = (
    ("Mimicry DCGAN: ResNet nets, n_dis 5, 200k G steps; 10k train vs 10k", 28.95),
    ("StudioGAN DCGAN: this CNN, n_dis 2, best of 200k G steps; 10k test vs 10k", 50.28),
)
# StudioGAN's committed training log of the SN-paper CNN on CIFAR-10
# (`logs/DCGAN-train-2020_09_15_13_23_51.log`, commit 65ee529; n_dis 2, raw G): FID of 10k
# samples against the test split's moments every 2,000 G updates, here up to 50,000 (its best,
# 49.03, came at 42,000; later the run collapsed, above 100 from 54,000 on).
STUDIOGAN_LOG_LABEL = "StudioGAN's log of this CNN (n_dis 2, raw G; 10k vs test)"
STUDIOGAN_LOG_N_CRITIC = 2
STUDIOGAN_LOG = (
    (2000, 114.94), (4000, 92.60), (6000, 75.59), (8000, 77.45), (10000, 65.25),
    (12000, 64.16), (14000, 66.32), (16000, 59.91), (18000, 66.28), (20000, 60.33),
    (22000, 57.86), (24000, 55.20), (26000, 50.63), (28000, 67.34), (30000, 65.66),
    (32000, 53.87), (34000, 50.09), (36000, 51.47), (38000, 54.42), (40000, 55.72),
    (42000, 49.03), (44000, 61.56), (46000, 90.17), (48000, 73.58), (50000, 85.87),
)
FID_KEY = "inception_fid"
SAMPLES_KEY = "inception_samples"  # generated images behind a score (rows written since it was)
RAW_PREFIX = "raw_"  # the raw generator's scores in a run with a weight average
EVAL_KEY, RAW_EVAL_KEY = "eval_inception_fid", "eval_raw_inception_fid"  # train.py eval's


@dataclass
class Curve:
    """One run's Inception FIDs: periodic points, the final score and `train.py eval` scores."""

    label: str
    periodic: list[tuple[int, float]] = field(default_factory=list)
    final: tuple[int, float] | None = None
    evals: list[tuple[int, float]] = field(default_factory=list)
    periodic_n: int | None = None  # generated images per periodic score
    final_n: int | None = None
    eval_n: int | None = None
    n_critic: int = 1


def read_json(path: Path) -> dict:
    """A JSON file as a dict ({} when absent); a broken one is the user's to fix."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); repair or "
                        "remove it") from None


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a truncated last line (a run killed mid-write) is skipped."""
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                continue
            raise UserError(f"{path}: line {number} is not JSON; repair or remove it") from None
    return rows


def protocol_n(summary: dict, key: str) -> tuple[int | None, int | None]:
    """(step, generated images) of summary[key]'s Inception score, or Nones."""
    section = summary.get(key) or {}
    inception = section.get("inception") or {}
    n = (inception.get("protocol") or {}).get("n_fake")
    return section.get("step"), n


def _other_count(samples: float | None, periodic_n: int | None) -> bool:
    return samples is not None and periodic_n is not None and int(samples) != periodic_n


def load_curve(run_dir: str | Path, label: str | None = None, *, raw: bool = False) -> Curve:
    """A run's Inception FID curve (see the module docstring): its EMA generator's, or with
    `raw` its raw generator's (`raw_` scalars, written when the run has a weight average)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory '{run}' not found; give the --workdir of a GAN run")
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"'{run}' has no metrics.jsonl; give the --workdir of a GAN run that "
                        "has logged")
    config, summary = read_json(run / "config.json"), read_json(run / "summary.json")
    curve = Curve(label or run.name, n_critic=int(config.get("n_critic", 1)))
    curve.periodic_n = (config.get("metrics") or {}).get("periodic_num_samples")
    fid_key = RAW_PREFIX + FID_KEY if raw else FID_KEY
    eval_key = RAW_EVAL_KEY if raw else EVAL_KEY
    final_step, curve.final_n = protocol_n(summary, "gan_metrics_raw" if raw else "gan_metrics")
    _, curve.eval_n = protocol_n(summary, "eval_raw" if raw else "eval")
    samples_key = (RAW_PREFIX if raw else "") + SAMPLES_KEY
    evals, earlier_finals = {}, {}  # a checkpoint scored twice: its latest score
    for row in read_metrics(metrics):
        step = int(row["step"])
        if fid_key in row and step == final_step:
            curve.final = (step, float(row[fid_key]))
        elif fid_key in row and _other_count(row.get(samples_key), curve.periodic_n):
            # The final score of a run since resumed with more steps: full-size, not periodic.
            earlier_finals[step] = float(row[fid_key])
            curve.eval_n = curve.eval_n or int(row[samples_key])
        elif fid_key in row:
            curve.periodic.append((step, float(row[fid_key])))
        if eval_key in row:
            evals[step] = float(row[eval_key])
    curve.evals = sorted({**earlier_finals, **evals}.items())
    return curve


def load_curves(run_dir: str | Path, label: str | None = None) -> list[Curve]:
    """A run's EMA-generator curve, and its raw-generator curve when the run scored both."""
    ema = load_curve(run_dir, label)
    raw = load_curve(run_dir, label, raw=True)
    if not (raw.periodic or raw.final or raw.evals):
        return [ema]
    ema.label, raw.label = f"{ema.label} EMA G", f"{raw.label} raw G"
    return [ema, raw]


def parse_reference(text: str) -> tuple[str, float]:
    """"LABEL=FID" -> (LABEL, FID)."""
    label, sep, value = text.rpartition("=")
    try:
        fid = float(value)
    except ValueError:
        fid = None
    if not sep or not label.strip() or fid is None:
        raise UserError(f"--reference '{text}' must be LABEL=FID, e.g. "
                        "--reference 'StudioGAN 2022=49.03'")
    return label.strip(), fid


def samples_text(n: int | None) -> str:
    if not n:
        return "n ?"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def published_curve(curves: list[Curve], x_unit: str) -> Curve:
    """StudioGAN's logged curve on the plot's x axis (its G updates, or its D updates on the
    steps axis), up to one and a half times the furthest point of `curves`."""
    scale = 1 if x_unit == "g_updates" else STUDIOGAN_LOG_N_CRITIC
    furthest = max((step / (c.n_critic if x_unit == "g_updates" else 1)
                    for c in curves for step, _ in c.periodic + c.evals +
                    ([c.final] if c.final else [])), default=0)
    points = [(g * scale, fid) for g, fid in STUDIOGAN_LOG if g * scale <= 1.5 * furthest]
    return Curve(STUDIOGAN_LOG_LABEL, periodic=points or [(STUDIOGAN_LOG[0][0] * scale,
                                                           STUDIOGAN_LOG[0][1])])


def plot(curves: list[Curve], references: list[tuple[str, float]], out: Path, *,
         x_unit: str = "steps", published: Curve | None = None) -> Path:
    """Draws the curves, a published curve (already on the x axis) and the reference lines
    into `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(curves):
        color = colors[i % len(colors)]
        scale = curve.n_critic if x_unit == "g_updates" else 1

        def xs(points, scale=scale):
            return [step / scale for step, _ in points]

        if curve.periodic:
            ax.plot(xs(curve.periodic), [f for _, f in curve.periodic], "o-", color=color,
                    label=f"{curve.label} ({samples_text(curve.periodic_n)} samples)")
        if curve.final:
            ax.plot(xs([curve.final]), [curve.final[1]], "*", color=color, markersize=14,
                    label=f"{curve.label} final ({samples_text(curve.final_n)} samples)")
        if curve.evals:
            # Checkpoints scored on the final score's sample count join it in one dashed curve.
            points = sorted(curve.evals + ([curve.final] if curve.final and
                                           curve.final_n == curve.eval_n else []))
            ax.plot(xs(points), [f for _, f in points], "D--", color=color,
                    fillstyle="none", label=f"{curve.label} eval "
                                            f"({samples_text(curve.eval_n)} samples)")
    if published is not None:
        ax.plot([x for x, _ in published.periodic], [f for _, f in published.periodic], "s:",
                color="gray", label=published.label)
    for j, (label, fid) in enumerate(references):
        ax.axhline(fid, color="gray", linestyle=("--", ":", "-.")[j % 3], linewidth=1.2,
                   label=f"{label}: {fid:g}")
    ax.set_xlabel("G updates" if x_unit == "g_updates" else "training steps (D updates)")
    ax.set_ylabel("Inception FID (lower is better)")
    ax.set_title("DCGAN FID against training steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def describe(curve: Curve) -> list[str]:
    """One line per point, for the terminal."""
    lines = [f"{curve.label}: step {s}: FID {f:.2f} ({samples_text(curve.periodic_n)} samples)"
             for s, f in curve.periodic]
    if curve.final:
        lines.append(f"{curve.label}: step {curve.final[0]}: FID {curve.final[1]:.2f} final "
                     f"({samples_text(curve.final_n)} samples)")
    lines += [f"{curve.label}: step {s}: FID {f:.2f} eval ({samples_text(curve.eval_n)} samples)"
              for s, f in curve.evals]
    return lines


def run(args: argparse.Namespace) -> Path:
    if args.label and len(args.label) != len(args.run_dirs):
        raise UserError(f"{len(args.label)} --label for {len(args.run_dirs)} run directories; "
                        "give one --label per run or none")
    labels = args.label or [None] * len(args.run_dirs)
    curves = [curve for d, label in zip(args.run_dirs, labels, strict=True)
              for curve in load_curves(d, label)]
    empty = [c.label for c in curves if not (c.periodic or c.final or c.evals)]
    if len(empty) == len(curves):
        raise UserError(f"no {FID_KEY} in the metrics.jsonl of {', '.join(empty)}; train with "
                        "--config.metrics.inception=True (and metrics.every > 0) or score a "
                        "checkpoint with `train.py eval --workdir RUN --inception`")
    for label in empty:
        print(f"note: {label} has no Inception FID yet; drawn without it", file=sys.stderr)
    references = [] if args.no_published else list(PUBLISHED)
    references += [parse_reference(r) for r in args.reference or []]
    for curve in curves:
        for line in describe(curve):
            print(line)
    published = None if args.no_published else published_curve(curves, args.x)
    path = plot(curves, references, Path(args.out), x_unit=args.x, published=published)
    print(f"wrote {path}")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="GAN run workdirs")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--label", action="append", help="legend name per run (in order)")
    parser.add_argument("--reference", action="append", metavar="LABEL=FID",
                        help="another horizontal reference line (repeatable)")
    parser.add_argument("--no-published", action="store_true",
                        help="leave out the published Mimicry and StudioGAN lines and "
                             "StudioGAN's logged curve")
    parser.add_argument("--x", choices=("steps", "g_updates"), default="steps",
                        help="x axis: training steps or G updates (steps / n_critic)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
