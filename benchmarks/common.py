"""What every benchmark script shares: config loading, the model registry, timing by alternating
rounds, and the JSON record (versions, hardware, commit, date).

Not a benchmark itself. Nothing here imports JAX at module level, so a script can still force
the number of host devices before JAX starts (see `force_host_devices`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# Every model the benchmarks measure: name -> config file[:variant], relative to the project
# root. A new model registers here and every script picks it up.
REGISTRY: dict[str, str] = {
    "dcgan_fashion_mnist": "gans_jax/configs/dcgan_fashion_mnist.py",
    "dcgan_mnist": "gans_jax/configs/dcgan_mnist.py",
    "dcgan_anime": "gans_jax/configs/dcgan_anime.py",
    "dcgan_cifar10": "gans_jax/configs/dcgan_cifar10.py",
    "cls_mnist": "classifiers_jax/configs/mnist.py",
    "cls_mnist_basic": "classifiers_jax/configs/mnist.py:basic",
    "cls_fashion_mnist": "classifiers_jax/configs/fashion_mnist.py",
    "cls_cifar10": "classifiers_jax/configs/cifar10.py",
    "cls_cifar10_fast": "classifiers_jax/configs/cifar10_fast.py",
    "cls_cifar100": "classifiers_jax/configs/cifar100.py",
    "cyclegan_facemask": "gans_jax/configs/cyclegan_facemask.py",
    # ProGAN: the step at each resolution (the run stopped growing there, last stage)
    "progan_anime_4": "gans_jax/configs/progan_anime.py:at4",
    "progan_anime_8": "gans_jax/configs/progan_anime.py:at8",
    "progan_anime_16": "gans_jax/configs/progan_anime.py:at16",
    "progan_anime_32": "gans_jax/configs/progan_anime.py:at32",
    "progan_anime_64": "gans_jax/configs/progan_anime.py:at64",
    "ae_cifar10": "autoencoders_jax/configs/cifar10.py",
    "cls_resnet50": "classifiers_jax/configs/resnet50_imagenet.py:torchvision",
}

_FORCE_FLAG = "--xla_force_host_platform_device_count"


# ----------------------------------------------------------------------------- devices


def force_host_devices(n: int) -> None:
    """Asks XLA for `n` CPU devices; only works before JAX initialises its backends.

    An existing setting wins (the test suite's, or the user's own XLA_FLAGS).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if _FORCE_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_FORCE_FLAG}={n}".strip()


def ensure_devices(n: int, *, reexec: bool) -> None:
    """Makes sure `n` JAX devices exist: on CPU, restarts the process with forced host devices
    when `reexec` (a command-line run), else explains how to get them."""
    import jax

    have = len(jax.devices())
    if have >= n:
        return
    if reexec and jax.default_backend() == "cpu" and _FORCE_FLAG not in os.environ.get(
            "XLA_FLAGS", ""):
        force_host_devices(n)
        # The backend is already up with too few devices; only a fresh process can change it.
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    raise SystemExit(f"error: {n} devices requested but JAX has {have}; on CPU set "
                     f"XLA_FLAGS={_FORCE_FLAG}={n} before starting Python")


def choose_devices(args: Any, *, reexec: bool) -> None:
    """Resolves `args.devices` (0: as train.py, one per CPU core on a CPU, else 1) and makes
    sure that many devices exist (see `ensure_devices`)."""
    if args.devices == 0:
        import jax

        from common_jax.parallel import use_cpu_cores

        chosen = use_cpu_cores(())
        args.devices = chosen if jax.default_backend() == "cpu" else 1
    ensure_devices(args.devices, reexec=reexec)


# ----------------------------------------------------------------------------- configs


def load_config(spec: str):
    """An ml_collections config from ``file.py[:variant]`` (file relative to the project)."""
    file, _, variant = spec.partition(":")
    path = Path(file) if Path(file).is_absolute() else ROOT / file
    module_spec = importlib.util.spec_from_file_location(f"bench_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return without_sample_scoring(module.get_config(variant or None))


def without_sample_scoring(config):
    """The config with a GAN's periodic sample scores switched off: benchmarks time steps,
    and scoring would need the FID Inception weights or a judge's run on the machine."""
    metrics = config.get("metrics")
    if metrics is not None and "inception" in metrics:
        metrics.inception = False
        metrics.judge_workdir = ""
    return config


def smoke_spec(spec: str) -> str:
    """The same config with the `smoke` variant added (smoke-size models, a few steps)."""
    file, _, variant = spec.partition(":")
    return f"{file}:{variant}+smoke" if variant else f"{file}:smoke"


def select(only: list[str] | None, default: list[str] | None = None) -> dict[str, str]:
    """Registry entries by name, in registry order; unknown names stop with the known ones."""
    names = only or default or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise SystemExit(f"error: unknown model(s) {', '.join(unknown)}; known: "
                         f"{', '.join(REGISTRY)}")
    return {n: REGISTRY[n] for n in REGISTRY if n in names}


def config_values(config) -> dict[str, Any]:
    """The whole config as plain JSON values, for the record."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def batch_size(config) -> int:
    """The global batch of the step a model's benchmarks time: `batch_size`, or for a
    growing GAN (ProGAN) its last stage's, `schedule.batch_sizes[-1]`."""
    if "schedule" in config and "batch_sizes" in config.schedule:
        return int(config.schedule.batch_sizes[-1])
    return config.batch_size


def family(config) -> str:
    """The model family, "gan" or "classifier", from the trainer the config names."""
    return "gan" if config.trainer.startswith("gans_jax.") else "classifier"


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class Contestant:
    """One thing to time: `run(n)` performs n steps and returns when they are done."""

    name: str
    run: Callable[[int], None]
    images_per_step: int
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 0  # steps per timed round (set by `warm_up`)
    seconds: list[float] = dataclasses.field(default_factory=list)  # s/step, one per round
    # The process's CPU time (every thread, user and system) per step, one per round.
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def warm_up(c: Contestant, *, warmup: int, steps: int, round_seconds: float,
            max_steps: int = 50) -> None:
    """Runs `warmup` untimed steps; picks the steps per round (`steps`, or enough steps for
    about `round_seconds` when 0). A failure is kept in `c.error` and ends its timing."""
    try:
        seconds = timed(lambda: c.run(max(warmup, 1))) / max(warmup, 1)
    except Exception as e:  # noqa: BLE001 - a failing contestant must not stop the rest
        c.error = f"failed in the warm-up: {first_line(e)}"
        return
    c.info["warmup_s_per_step"] = round(seconds, 4)
    c.steps = steps or int(min(max(round(round_seconds / max(seconds, 1e-6)), 2), max_steps))


def alternate(contestants: list[Contestant], repeats: int, log: Callable[[str], None] = print
              ) -> None:
    """Times `repeats` rounds, one contestant after the other in each round, so that load from
    other processes on the machine falls on all of them alike."""
    for r in range(repeats):
        for c in contestants:
            if c.error:
                continue
            try:
                cpu = time.process_time()
                c.seconds.append(timed(lambda c=c: c.run(c.steps)) / c.steps)
                c.cpu_seconds.append((time.process_time() - cpu) / c.steps)
            except Exception as e:  # noqa: BLE001 - a failing contestant must not stop the rest
                c.error = f"failed in round {r + 1}: {first_line(e)}"
                log(f"  {c.name}: {c.error}")


def time_per_shape(shapes: dict[str, tuple[int, ...]],
                   make_contestants: Callable[[tuple[int, ...]], list[Contestant]],
                   args: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """For the operation benchmarks: each shape's contestants warmed up once (the call that
    compiles), then timed in alternating rounds; yields (label, {contestant name: entry})."""
    for label, shape in shapes.items():
        found = make_contestants(shape)
        for c in found:
            warm_up(c, warmup=1, steps=0, round_seconds=args.round_seconds, max_steps=100)
        alternate(found, 2 if args.tiny else args.repeats)
        yield label, {c.name: result(c) for c in found}


def operation_args(doc: str, argv=None, repeats: int = 3):
    """The operation benchmarks' command line: rounds, seconds per round, the common flags."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds per contestant")
    parser.add_argument("--round-seconds", type=float, default=0.5)
    add_common_args(parser)
    return parser.parse_args(argv)


def summary(seconds: list[float], images_per_step: int) -> dict[str, Any]:
    """images/s and ms/step as mean and std over rounds (std 0 for one round)."""
    if not seconds:
        return {}
    rates = [images_per_step / s for s in seconds]
    sd = statistics.stdev if len(seconds) > 1 else (lambda _: 0.0)
    return {"images_per_s": round(statistics.mean(rates), 2),
            "images_per_s_std": round(sd(rates), 2),
            "ms_per_step": round(1000 * statistics.mean(seconds), 3),
            "ms_per_step_std": round(1000 * sd(seconds), 3),
            "rounds": len(seconds)}


def cpu_usage(seconds: list[float], cpu_seconds: list[float]) -> dict[str, float]:
    """The process's CPU time per step and the cores it kept busy on average (CPU time over
    wall time). Threads that spin while they wait count as busy: a contestant that keeps fewer
    cores busy than it has leaves time on the table; one that keeps them all busy and is still
    slower does more work, or wastes it spinning."""
    return {"cpu_ms_per_step": round(1000 * statistics.mean(cpu_seconds), 3),
            "cores_busy": round(sum(cpu_seconds) / sum(seconds), 3)}


def result(c: Contestant) -> dict[str, Any]:
    """A contestant's record entry: its settings, figures and any error."""
    out = {**c.info, "steps_per_round": c.steps, **summary(c.seconds, c.images_per_step)}
    if c.cpu_seconds:
        out.update(cpu_usage(c.seconds, c.cpu_seconds))
    if c.error:
        out["error"] = c.error
    return out


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


# ----------------------------------------------------------------------------- records


def import_torch():
    """PyTorch, or None when it is not installed (it is optional: the `bench` extra).

    Unless the environment says otherwise, PyTorch's OpenMP threads sleep when idle instead of
    spinning: JAX and PyTorch rounds alternate in one process, and spinning threads would take
    the cores from the JAX rounds; on a machine shared with other jobs, spin-waiting OpenMP
    barriers also made small PyTorch steps over 20x slower here. libgomp reads the setting
    when it loads, so it only applies if PyTorch was not imported before.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return None
    return torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def git_dirty() -> bool | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    import flax
    import jax
    import jaxlib
    import optax

    torch = import_torch()
    return {"python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "torch": torch.__version__ if torch else None}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def header(script: str, args: Any) -> dict[str, Any]:
    """The fields every record starts with."""
    import jax

    from common_jax import onednn

    devices = jax.devices()
    torch = import_torch()
    return {
        "benchmark": script,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(), "commit_dirty": git_dirty(),
        "versions": versions(),
        "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
        "num_devices": len(devices), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if torch else None,
        "host": platform.node(),
        # Other jobs on the machine change every figure: the 1-minute load average says so.
        "load_average_start": round(os.getloadavg()[0], 2),
        # LD_PRELOAD names the allocator (tcmalloc under `make bench`; none: glibc's malloc).
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS",
                                               "OMP_WAIT_POLICY", "JAX_PLATFORMS", "LD_PRELOAD")},
        "args": {k: v for k, v in vars(args).items() if k not in ("out", "tag")},
        "tiny": bool(getattr(args, "tiny", False)),
        # Which oneDNN computed the convolutions, if any (version and library path).
        "onednn": onednn.status(),
    }


def default_tag(args: Any) -> str:
    import jax

    return args.tag or f"{jax.default_backend()}{'-tiny' if getattr(args, 'tiny', False) else ''}"


def write_record(record: dict[str, Any], args: Any) -> Path:
    """Writes <out>/<benchmark>_<tag>.json and returns its path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{record['benchmark']}_{default_tag(args)}.json"
    record["load_average_end"] = round(os.getloadavg()[0], 2)
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"record: {path}")
    return path


def add_model_args(parser, *, default: str = "all", round_seconds: float = 1.0) -> None:
    """The options every per-model script shares: which models, batch and timing rounds."""
    parser.add_argument("--only", action="append", choices=list(REGISTRY),
                        help=f"model to measure (repeatable; default: {default})")
    parser.add_argument("--batch", type=int, default=0, help="global batch (default: config's)")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed steps per round (default: enough for --round-seconds)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per contestant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--round-seconds", type=float, default=round_seconds)


def shrink_if_tiny(args: Any) -> Any:
    """--tiny: two steps per round, at most two rounds, one warm-up step."""
    if args.tiny:
        args.steps, args.repeats, args.warmup = args.steps or 2, min(args.repeats, 2), 1
    return args


def model_configs(args: Any, default: list[str] | None = None):
    """(name, config spec, config) for each selected model: smoke-size under --tiny, with the
    --batch override applied."""
    for name, spec in select(args.only, default).items():
        spec = smoke_spec(spec) if args.tiny else spec
        config = load_config(spec)
        if args.batch and "schedule" in config:  # a growing GAN: its timed (last) stage's
            config.schedule.batch_sizes = (*config.schedule.batch_sizes[:-1], args.batch)
        elif args.batch:
            config.batch_size = args.batch
        yield name, spec, config


def add_common_args(parser) -> None:
    parser.add_argument("--out", default=str(RESULTS), help="folder for the JSON record")
    parser.add_argument("--tag", default="",
                        help="record name suffix (default: the backend, e.g. cpu; cpu-tiny)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke-size models and 1-2 steps: checks that everything runs")
