"""Data-parallel scaling: the same global batch on 1, 2, 4 and 8 devices, in both parallel
modes of `common_jax.parallel.DataParallel` ("shard_map" and "pmap").

    python -m benchmarks.scaling                               # DCGAN MNIST, MNIST classifier
    python -m benchmarks.scaling --only dcgan_anime --devices 1,8 --modes shard_map
    python -m benchmarks.scaling --tiny

On a CPU the devices are forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8,
set here before JAX starts unless XLA_FLAGS already sets a count): they share the same cores, so
the ideal is the 1-device throughput (speedup 1) and the figures show what splitting the batch
costs. On accelerators the real devices are used and the ideal speedup is the device count.
Every (mode, devices) step is compiled first (compile time reported), then timed in rounds that
alternate over all of them, after a warm-up, on a synthetic batch already on the devices.
Reported: images/s (mean ± std over rounds), ms/step, speedup over 1 device of the same mode,
and efficiency = speedup / ideal speedup. Writes benchmarks/results/scaling_<tag>.json.
"""

from __future__ import annotations

from benchmarks.common import force_host_devices

force_host_devices(8)  # before JAX initialises its CPU backend

import argparse  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.train_step import JaxStep  # noqa: E402
from common_jax.parallel import MODES  # noqa: E402

MODELS = ["dcgan_mnist", "cls_mnist"]
DEVICE_COUNTS = (1, 2, 4, 8)


def forced_host_devices() -> bool:
    """True when the devices are host CPU devices sharing the same cores."""
    return jax.default_backend() == "cpu" and len(jax.devices()) > 1


def scaling_rows(contestants: list[common.Contestant]) -> list[dict[str, Any]]:
    """Per (mode, devices): figures, speedup over the same mode's 1-device run, efficiency."""
    rows = [common.result(c) for c in contestants]
    base = {r["parallel"]: r.get("images_per_s") for r in rows if r["devices"] == 1}
    for r in rows:
        one, rate = base.get(r["parallel"]), r.get("images_per_s")
        if one and rate:
            r["speedup_vs_1"] = round(rate / one, 3)
            ideal = 1 if forced_host_devices() else r["devices"]
            r["ideal_speedup"] = ideal
            r["efficiency"] = round(rate / one / ideal, 3)
    return rows


def measure_model(config, args, log=print) -> dict[str, Any]:
    counts = [n for n in args.devices if n <= len(jax.devices())]
    skipped = {str(n): f"only {len(jax.devices())} devices" for n in args.devices
               if n not in counts}
    contestants = []
    for mode in args.modes:
        for n in counts:
            if config.batch_size % n:
                skipped[f"{mode}_{n}"] = f"batch {config.batch_size} not divisible by {n}"
                continue
            step = JaxStep(config, devices=n, mode=mode)
            log(f"  {mode:9s} {n} device(s): compiled in {step.compile_s:.1f} s")
            c = step.contestant(f"{mode}_{n}")
            c.info.pop("xla_memory", None)
            contestants.append(c)
    for c in contestants:
        common.warm_up(c, warmup=args.warmup, steps=args.steps, round_seconds=args.round_seconds)
    common.alternate(contestants, args.repeats, log)
    rows = scaling_rows(contestants)
    for r in rows:
        log(f"  {r['parallel']:9s} {r['devices']} device(s): {r.get('images_per_s', 0):9.1f} ± "
            f"{r.get('images_per_s_std', 0):.1f} images/s, efficiency {r.get('efficiency')}")
    return {"batch": config.batch_size, "rows": rows, "skipped": skipped}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser, default=", ".join(MODELS), round_seconds=0.75)
    parser.add_argument("--devices", default=",".join(map(str, DEVICE_COUNTS)),
                        help="comma-separated device counts")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    args.devices = sorted({int(n) for n in str(args.devices).split(",") if n.strip()})
    return common.shrink_if_tiny(args)


def main(argv=None) -> dict:
    args = parse_args(argv)
    record = common.header("scaling", args)
    record["forced_host_devices"] = forced_host_devices()
    record["results"] = {}
    for name, spec, config in common.model_configs(args, MODELS):
        print(f"{name} ({spec}, global batch {config.batch_size})")
        record["results"][name] = {"config": spec, **measure_model(config, args),
                                   "config_values": common.config_values(config)}
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
