"""Inference forward-pass throughput of registered classifiers, in JAX beside the PyTorch twin.

    python -m benchmarks.forward                         # cls_resnet50, batch 16, 224 and 64
    python -m benchmarks.forward --only cls_cifar10 --sizes 32 --batch 256
    python -m benchmarks.forward --tiny                  # two steps a round: checks it runs

`train_step` times training; this times what feature extraction and classification run: the
model's forward pass in inference mode (batch norm with running statistics, no gradients) on
one synthetic batch at each image size of `--sizes`. JAX: the jitted ``model.apply(variables,
images, train=False)`` on the default device (on a CPU one device, which uses every core).
PyTorch: the twin of `benchmarks.torch_models` in eval mode under ``torch.inference_mode()``,
eager (in the faster memory layout of a short probe) and under torch.compile. Rounds
alternate between the contestants after a warm-up, as in `train_step`. Reported per size:
images/s and ms/batch as mean ± std over rounds, JAX compile time, XLA's FLOPs per batch, and
the JAX/PyTorch ratios. Writes benchmarks/results/forward_<tag>.json.
"""

from __future__ import annotations

import argparse
import importlib
import time
from typing import Any

import numpy as np

from benchmarks import common

DEFAULT_MODELS = ["cls_resnet50"]
DEFAULT_SIZES = (224, 64)
DEFAULT_BATCH = 16


def synthetic_images(batch: int, size: int, channels: int) -> np.ndarray:
    """Images in [-1, 1], NHWC float32, the same for every contestant."""
    rng = np.random.RandomState(0)
    return rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)


def jax_contestant(config, images: np.ndarray) -> common.Contestant:
    """The jitted inference forward pass of the config's Flax model, compiled ahead of time."""
    import jax

    trainer = importlib.import_module(config.trainer)
    model = trainer.make_model(config)
    variables = model.init(jax.random.PRNGKey(0), images[:1], train=False)
    x = jax.device_put(images)
    start = time.perf_counter()
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    compile_s = time.perf_counter() - start

    def run(n: int) -> None:
        out = None
        for _ in range(n):
            out = compiled(variables, x)
        jax.block_until_ready(out)

    costs = compiled.cost_analysis()
    if isinstance(costs, (list, tuple)):  # older JAX: one dict per program
        costs = costs[0] if costs else {}
    flops = (costs or {}).get("flops")
    return common.Contestant("jax", run, len(images), {
        "compile_s": round(compile_s, 2),
        "gflops_per_batch": round(float(flops) / 1e9, 3) if flops else None})


def torch_forward(torch, config, images: np.ndarray, memory_format, *, compile: bool):
    """The twin in eval mode and its forward pass on the images (NCHW)."""
    from benchmarks import torch_models

    torch.manual_seed(config.seed)
    net = torch_models.classifier_from_config(config).eval().to(memory_format=memory_format)
    if compile:
        net = torch.compile(net)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).contiguous(
        memory_format=memory_format)

    def run(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                net(x)

    return run


def pick_memory_format(torch, config, images) -> tuple[Any, str, dict[str, float]]:
    """NCHW or channels_last, whichever is faster (best of two after two untimed calls)."""
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    runs = {k: torch_forward(torch, config, images, f, compile=False) for k, f in formats.items()}
    for run in runs.values():
        run(2)
    ms = {k: round(1000 * min(common.timed(lambda r=run: r(1)) for _ in range(2)), 2)
          for k, run in runs.items()}
    best = min(ms, key=ms.get)
    return formats[best], best, ms


def torch_contestants(config, images, *, compile: bool, log=print):
    """PyTorch eager (and compiled) contestants, or {name: reason} when they cannot run."""
    torch = common.import_torch()
    if torch is None:
        return [], {"torch": "skipped: PyTorch is not installed (the bench extra)"}
    from benchmarks import torch_models

    reason = torch_models.unsupported(config)
    if reason:
        return [], {"torch": f"skipped: {reason}"}
    fmt, name, ms = pick_memory_format(torch, config, images)
    log(f"  torch layout: {name} ({', '.join(f'{k} {v} ms' for k, v in ms.items())})")
    info = {"memory_format": name, "layout_probe_ms": ms, "threads": torch.get_num_threads()}
    out = [common.Contestant("torch_eager", torch_forward(torch, config, images, fmt,
                                                          compile=False), len(images), info)]
    if not compile:
        return out, {"torch_compile": "skipped: --no-torch-compile"}
    try:
        torch._dynamo.reset()
        run = torch_forward(torch, config, images, fmt, compile=True)
        start = time.perf_counter()
        run(1)  # compiles
        out.append(common.Contestant("torch_compile", run, len(images),
                                     {**info, "compile_s": round(time.perf_counter() - start, 2)}))
    except Exception as e:  # noqa: BLE001 - inductor fails in many ways (no compiler, ...)
        return out, {"torch_compile": f"failed: {common.first_line(e)}"}
    return out, {}


def measure(config, size: int, args, log=print) -> dict[str, Any]:
    """All contestants at one image size, rounds alternating."""
    config.model.image_size = size
    images = synthetic_images(args.batch, size, config.model.channels)
    contestants = [jax_contestant(config, images)]
    log(f"  jax compile {contestants[0].info['compile_s']} s")
    skipped: dict[str, str] = {}
    if args.no_torch:
        skipped["torch"] = "skipped: --no-torch"
    else:
        found, skipped = torch_contestants(config, images, compile=not args.no_torch_compile,
                                           log=log)
        contestants += found
    for c in contestants:
        common.warm_up(c, warmup=args.warmup, steps=args.steps, round_seconds=args.round_seconds)
    common.alternate(contestants, args.repeats, log)
    entry: dict[str, Any] = {"batch": args.batch, "image_shape": [size, size,
                                                                  config.model.channels]}
    for c in contestants:
        entry[c.name] = common.result(c)
        r = entry[c.name]
        log(f"  {c.name:14s} {r.get('images_per_s', 0):9.1f} ± {r.get('images_per_s_std', 0):.1f}"
            f" images/s  {r.get('ms_per_step', 0):9.1f} ms/batch")
    entry.update(skipped)
    jax_rate = entry["jax"].get("images_per_s")
    torch_rates = {k: v.get("images_per_s") for k, v in entry.items()
                   if k.startswith("torch_") and isinstance(v, dict)}  # skipped: a reason
    entry["ratios"] = {f"jax_over_{k}": round(jax_rate / rate, 3)
                       for k, rate in torch_rates.items() if jax_rate and rate}
    return entry


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser, default=", ".join(DEFAULT_MODELS), round_seconds=2.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="image sizes (square)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch twin")
    parser.add_argument("--no-torch-compile", action="store_true", help="PyTorch eager only")
    common.add_common_args(parser)
    args = common.shrink_if_tiny(parser.parse_args(argv))
    args.batch = args.batch or (2 if args.tiny else DEFAULT_BATCH)
    if args.tiny:
        args.sizes = [min(s, 64) for s in args.sizes][:1]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    common.import_torch()  # sets PyTorch's passive OpenMP wait before anything loads it
    record = common.header("forward", args)
    record["results"] = {}
    for name, spec in common.select(args.only, DEFAULT_MODELS).items():
        # Not the smoke variant under --tiny: the same network, smaller images and batch.
        config = common.load_config(spec)
        entry = {"config": spec, "by_size": {}}
        for size in args.sizes:
            print(f"{name} ({spec}, batch {args.batch}, {size}x{size})")
            entry["by_size"][str(size)] = measure(config, size, args)
        entry["config_values"] = common.config_values(config)
        record["results"][name] = entry
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
