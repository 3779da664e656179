"""DCGAN train-step throughput with the two forms of the transposed convolution, side by side.

    python -m benchmarks.upsample_impl --config gans_jax/configs/dcgan_fashion_mnist.py \
        --batch 128 --steps 20 --rounds 3

Both forms compute the same function with the same parameters (tests/test_dcgan_models.py);
this measures their speed on the current backend. Rounds alternate between the forms so that a
noisy machine affects both alike. Compile time is excluded and reported separately; steps run
on one synthetic batch already on the device. Prints a table and writes a JSON record to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from common_jax.parallel import DataParallel
from gans_jax.trainers import dcgan

IMPLS = ("xla", "subpixel")


def load_config(path: str) -> ml_collections.ConfigDict:
    file, _, variant = path.partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant or None)


def compiled_step(config, impl: str):
    """(step function, device state, device batch, compile seconds) for one upsampling form."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.upsample_impl = impl
    dp = DataParallel("shard_map", jax.devices()[:1])
    step = dp.compile(functools.partial(dcgan.train_step,
                                        config=ml_collections.FrozenConfigDict(config)))
    state = dp.put_state(dcgan.create_state(config))
    m = config.model
    images = np.random.RandomState(0).uniform(
        -1, 1, (config.batch_size, m.image_size, m.image_size, m.channels)).astype(np.float32)
    batch = dp.put_batch({"image": images})
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return step, state, batch, time.perf_counter() - start


def time_steps(step, state, batch, steps: int):
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return state, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="gans_jax/configs/dcgan_fashion_mnist.py")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    config = load_config(args.config)
    config.batch_size = args.batch
    runs = {impl: compiled_step(config, impl) for impl in IMPLS}
    states = {impl: runs[impl][1] for impl in IMPLS}
    for impl in IMPLS:  # warm-up
        states[impl], _ = time_steps(runs[impl][0], states[impl], runs[impl][2], 2)
    seconds = {impl: [] for impl in IMPLS}
    for _ in range(args.rounds):
        for impl in IMPLS:
            states[impl], dt = time_steps(runs[impl][0], states[impl], runs[impl][2], args.steps)
            seconds[impl].append(dt)

    record = {"benchmark": "upsample_impl", "config": args.config, "batch": args.batch,
              "image_size": config.model.image_size, "steps_per_round": args.steps,
              "rounds": args.rounds, "jax": jax.__version__, "backend": jax.default_backend(),
              "cpu": platform.processor() or platform.machine(),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip(),
              "date": time.strftime("%Y-%m-%d"), "results": {}}
    for impl in IMPLS:
        rates = [args.batch / s for s in seconds[impl]]
        record["results"][impl] = {
            "images_per_s_mean": round(statistics.mean(rates), 1),
            "images_per_s_std": round(statistics.stdev(rates), 1) if len(rates) > 1 else 0.0,
            "ms_per_step_mean": round(1000 * statistics.mean(seconds[impl]), 1),
            "compile_s": round(runs[impl][3], 2)}
    record["speedup_subpixel_over_xla"] = round(
        record["results"]["subpixel"]["images_per_s_mean"]
        / record["results"]["xla"]["images_per_s_mean"], 2)
    for impl, r in record["results"].items():
        print(f"{impl:9s} {r['images_per_s_mean']:8.1f} ± {r['images_per_s_std']:.1f} images/s "
              f"({r['ms_per_step_mean']} ms/step, compile {r['compile_s']} s)")
    print(f"subpixel / xla: {record['speedup_subpixel_over_xla']}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"upsample_impl_{Path(args.config.split(':')[0]).stem}_b{args.batch}.json"
    (out / name).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
