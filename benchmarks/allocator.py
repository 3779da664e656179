"""How much the memory allocator matters on CPU: the same work in fresh processes under glibc's
malloc and under tcmalloc (preloaded), in alternating rounds.

    python -m benchmarks.allocator                  # Inception features and a CIFAR-10 step
    python -m benchmarks.allocator --work inception --images 500 --batch 250
    python -m benchmarks.allocator --tiny           # the smoke MNIST classifier, seconds

XLA's CPU runtime allocates and frees its large temporary buffers on every call. glibc's malloc
serves blocks above 32 MB with mmap and returns them to the kernel when freed, so every call
faults its pages in again; tcmalloc keeps them. Works:
- "inception": FID Inception pool3 features of --images random 28x28 gray images at --batch, as
  `train.py eval` computes them (one device per core; the converted weights from
  `make fid-weights`).
- "train:<model>": the train step of a registered model on a synthetic batch, on --devices.
An allocator is chosen when a process starts, so each round is a new process (a "worker"); it
warms up (compiling), then reports images/s of its timed part with the minor page faults and
system CPU seconds spent in it, and the process's peak resident memory (tcmalloc keeps what
it frees, so it holds more). Writes benchmarks/results/allocator_<tag>.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks import common

TCMALLOC_GLOBS = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
                  "/usr/lib/*/libtcmalloc.so.4")
DEFAULT_WORK = ("inception", "train:cls_cifar10_fast")
TINY_WORK = ("train:cls_mnist_basic",)


def find_tcmalloc() -> str | None:
    for pattern in TCMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


# ----------------------------------------------------------------------------- worker side


def _usage() -> tuple[float, float, int]:
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime, u.ru_stime, u.ru_minflt


def _measure(run, images: int) -> dict:
    """Times run() with the CPU seconds and page faults it costs this process."""
    user0, sys0, faults0 = _usage()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    user1, sys1, faults1 = _usage()
    return {"seconds": round(seconds, 3), "images_per_s": round(images / seconds, 2),
            "user_s": round(user1 - user0, 2), "sys_s": round(sys1 - sys0, 2),
            "minor_faults": faults1 - faults0, "peak_rss_mb": common.peak_rss_mb()}


def inception_work(images: int, batch: int) -> dict:
    from common_jax.parallel import use_cpu_cores

    use_cpu_cores(())  # as train.py eval
    import numpy as np

    from common_jax.metrics import gan_metrics as gm

    network = gm.load_feature_network()
    data = np.random.RandomState(0).uniform(-1, 1, (images, 28, 28, 1)).astype(np.float32)
    for _ in network.features(data[:batch], batch_size=batch):  # compiles
        pass
    return _measure(lambda: [None for _ in network.features(data, batch_size=batch)], images)


def train_work(model: str, devices: int, steps: int, tiny: bool) -> dict:
    common.force_host_devices(devices)
    from benchmarks.train_step import JaxStep

    spec = common.REGISTRY[model]
    config = common.load_config(common.smoke_spec(spec) if tiny else spec)
    step = JaxStep(config, devices=devices)
    step.run(1)  # the first call allocates everything once
    return _measure(lambda: step.run(steps), steps * config.batch_size)


def worker(args: argparse.Namespace) -> None:
    if args.worker == "inception":
        out = inception_work(args.images, args.batch)
    else:
        out = train_work(args.worker.split(":", 1)[1], args.devices, args.steps, args.tiny)
    print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------- driver side


def run_worker(work: str, preload: str | None, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    command = [sys.executable, "-m", "benchmarks.allocator", "--worker", work,
               "--images", str(args.images), "--batch", str(args.batch),
               "--devices", str(args.devices), "--steps", str(args.steps)]
    if args.tiny:
        command.append("--tiny")
    done = subprocess.run(command, cwd=common.ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit status {done.returncode}: {tail}"[:300]}
    return json.loads(lines[-1][len("RESULT "):])


def mean_std(values: list[float]) -> tuple[float, float]:
    return (round(statistics.mean(values), 2),
            round(statistics.stdev(values), 2) if len(values) > 1 else 0.0)


def summarize(rounds: list[dict]) -> dict:
    good = [r for r in rounds if "error" not in r]
    out: dict = {"rounds": rounds}
    if not good:
        out["error"] = rounds[-1]["error"] if rounds else "no rounds"
        return out
    for key in ("images_per_s", "sys_s", "user_s", "minor_faults", "peak_rss_mb"):
        out[key], out[f"{key}_std"] = mean_std([r[key] for r in good])
    cpu = [r["sys_s"] / max(r["sys_s"] + r["user_s"], 1e-9) for r in good]
    out["sys_share"] = round(statistics.mean(cpu), 3)
    return out


def measure(work: str, allocators: dict[str, str | None], args, log=print) -> dict:
    """Alternating rounds: one fresh process per allocator in each round."""
    rounds: dict[str, list[dict]] = {name: [] for name in allocators}
    for r in range(args.repeats):
        for name, preload in allocators.items():
            result = run_worker(work, preload, args)
            rounds[name].append(result)
            log(f"  {work} round {r + 1} {name}: "
                + (result.get("error") or f"{result['images_per_s']} images/s, "
                   f"sys {result['sys_s']} s, {result['minor_faults']} page faults"))
    entry = {name: summarize(rs) for name, rs in rounds.items()}
    if all("images_per_s" in entry.get(n, {}) for n in ("glibc", "tcmalloc")):
        entry["tcmalloc_speedup"] = round(
            entry["tcmalloc"]["images_per_s"] / entry["glibc"]["images_per_s"], 3)
    return entry


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", action="append",
                        help="inception or train:<model> (repeatable; default: "
                             f"{', '.join(DEFAULT_WORK)})")
    parser.add_argument("--images", type=int, default=500, help="inception: images timed")
    parser.add_argument("--batch", type=int, default=250, help="inception: images per batch")
    parser.add_argument("--devices", type=int, default=8, help="train: forced CPU devices")
    parser.add_argument("--steps", type=int, default=3, help="train: timed steps")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per allocator")
    parser.add_argument("--tcmalloc", default=None, help="the library to preload (default: "
                        "the Debian package's, libtcmalloc-minimal4)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.work = args.work or list(TINY_WORK)
        args.steps, args.repeats, args.devices = 2, 1, 2
    args.work = args.work or list(DEFAULT_WORK)
    for work in args.work:
        if work != "inception" and not (work.startswith("train:")
                                        and work.split(":", 1)[1] in common.REGISTRY):
            parser.error(f"unknown --work {work!r}: use inception or train:<model>, the model "
                         f"one of {', '.join(common.REGISTRY)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    tcmalloc = args.tcmalloc or find_tcmalloc()
    allocators: dict[str, str | None] = {"glibc": None}
    record = common.header("allocator", args)
    if tcmalloc:
        allocators["tcmalloc"] = tcmalloc
        record["tcmalloc"] = tcmalloc
    else:
        record["tcmalloc"] = None
        record["skipped"] = ("tcmalloc not found: install libtcmalloc-minimal4 (`make "
                             "tcmalloc`) or pass --tcmalloc PATH")
        print(record["skipped"])
    record["results"] = {}
    for work in args.work:
        print(work)
        record["results"][work] = measure(work, allocators, args)
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
