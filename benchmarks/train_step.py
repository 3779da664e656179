"""Train-step throughput of every registered model (`benchmarks.common.REGISTRY`), in JAX and,
side by side, in PyTorch; plus the input pipeline alone and end to end.

    python -m benchmarks.train_step                          # every model, as `make bench`
    python -m benchmarks.train_step --only dcgan_anime --only cls_mnist --repeats 5
    python -m benchmarks.train_step --devices 8 --parallel pmap   # forced CPU devices on a CPU
    python -m benchmarks.train_step --tiny                   # smoke-size models, seconds each
    python -m benchmarks.train_step --bfloat16 --no-torch    # JAX float32 beside JAX bfloat16
    python -m benchmarks.train_step --xla-conv               # oneDNN convolutions beside XLA's

For each model the state and the compiled step are built exactly as the training loop builds
them: the trainer's `make_task(config)` gives `create_state` and its last stage's `train_step`
(the only stage, except for a ProGAN: the step at its final resolution, with the fade blend),
`common_jax.parallel.DataParallel.compile` compiles it (here ahead of time, so the compile time
is measured on its own and XLA's cost and memory analyses come from the same executable). Steps
run on one synthetic batch already on the devices. After a warm-up, rounds alternate between
the JAX step, the PyTorch twin eager and the PyTorch twin under torch.compile (see
`benchmarks.torch_baselines`), so that load from other processes falls on all of them alike;
each round runs about `--round-seconds` of steps. Reported per contestant: images/s and ms/step
as mean ± std over the rounds, compile time; for JAX also FLOPs per step (XLA's cost analysis,
summed over the devices), achieved GFLOP/s and its fraction of the float32 XLA matmul peak
measured at the start of the same run (`benchmarks.peak`), XLA's memory analysis, device memory
statistics where the backend has them, and the process's peak RSS so far; the JAX/PyTorch
ratios. With `--xla-conv` (and the oneDNN extension built, `common_jax.conv`) a second JAX step
traced with the extension switched off joins the rounds, so the step with oneDNN's convolutions
and with XLA's alternate in one process; each JAX step records how many oneDNN custom calls its
compiled program holds. Then the model's real input pipeline alone and end to end
(`benchmarks.input_pipeline`). Writes benchmarks/results/train_step_<tag>.json.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time
from typing import Any
from unittest import mock

import jax
import ml_collections
import numpy as np

from benchmarks import common, input_pipeline, peak, torch_baselines
from common_jax import onednn
from common_jax.parallel import MODES, DataParallel


class JaxStep:
    """A model's compiled train step, device state and synthetic batch, as the loop builds them."""

    def __init__(self, config: ml_collections.ConfigDict, *, devices: int = 1,
                 mode: str = "shard_map"):
        self.config = config
        self.dp = DataParallel(mode, jax.devices()[:devices])
        self.dp.check_batch_size(common.batch_size(config))
        trainer = importlib.import_module(config.trainer)
        task = trainer.make_task(config)
        self.state = self.dp.put_state(task.create_state())  # waits for the copies
        self.params = param_counts(self.state, self.dp)
        # The last stage: the only one of most tasks; a growing GAN's final resolution.
        stage = task.stages[-1]
        # Ready before the first step, like the state (DataParallel.put_state says why).
        self.batch = jax.block_until_ready(
            self.dp.put_batch(synthetic_batch(config, tuple(stage.streams))))
        start = time.perf_counter()
        step = stage.train_step
        self.compiled = self.dp.compile(step).lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start
        # Convolutions that run as oneDNN custom calls (0: all of them are XLA's).
        self.onednn_calls = self.compiled.as_text().count('custom_call_target="Onednn')

    def run(self, n: int) -> None:
        """n steps on the synthetic batch, waiting for the last."""
        state, metrics = self.state, None
        for _ in range(n):
            state, metrics = self.compiled(state, self.batch)
        self.state = jax.block_until_ready(state)
        jax.block_until_ready(metrics)

    def run_on(self, batches, n: int) -> None:
        """n steps on batches from a host iterator, placed on the devices as the loop does."""
        state, metrics = self.state, None
        for _ in range(n):
            state, metrics = self.compiled(state, self.dp.put_batch(next(batches)))
        self.state = jax.block_until_ready(state)
        jax.block_until_ready(metrics)

    def contestant(self, name: str = "jax") -> common.Contestant:
        return common.Contestant(name, self.run, common.batch_size(self.config), {
            "devices": self.dp.num_devices, "parallel": self.dp.mode,
            "compile_s": round(self.compile_s, 2), "params": self.params,
            "onednn_custom_calls": self.onednn_calls,
            "flops_per_step": self.flops_per_step(), "xla_memory": self.memory()})

    def flops_per_step(self) -> float | None:
        """XLA's count for the per-device program, times the devices (each runs one copy)."""
        costs = self.compiled.cost_analysis()
        if isinstance(costs, (list, tuple)):  # older JAX: one dict per program
            costs = costs[0] if costs else None
        if not costs or "flops" not in costs:
            return None
        return float(costs["flops"]) * self.dp.num_devices

    def memory(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            stats = self.compiled.memory_analysis()
        except Exception:  # noqa: BLE001 - not every backend implements it
            stats = None
        for field in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                      "temp_size_in_bytes", "generated_code_size_in_bytes"):
            if stats is not None and hasattr(stats, field):
                out[field] = int(getattr(stats, field))
        device_stats = self.dp.devices[0].memory_stats()
        if device_stats:  # accelerators; the CPU backend keeps none
            out["device_peak_bytes_in_use"] = device_stats.get("peak_bytes_in_use")
            out["device_bytes_limit"] = device_stats.get("bytes_limit")
        return out


def is_cyclegan(config) -> bool:
    return config.trainer == "gans_jax.trainers.cyclegan"


def synthetic_batch(config, streams: tuple[str, ...] = ("train",)) -> dict:
    """A batch shaped like the loop's: images in [-1, 1] and int32 labels; with several
    streams (CycleGAN's "a" and "b"), one such batch per stream under its name."""
    m, batch = config.model, common.batch_size(config)
    rng = np.random.RandomState(0)

    def one() -> dict[str, np.ndarray]:
        images = rng.uniform(-1, 1, (batch, m.image_size, m.image_size, m.channels))
        labels = rng.randint(0, m.get("num_classes", 10), batch)
        return {"image": images.astype(np.float32), "label": labels.astype(np.int32)}

    return one() if len(streams) == 1 else {name: one() for name in streams}


NETWORKS = ("g", "d", "net", "g_ab", "g_ba", "d_a", "d_b")  # the states' network fields


def param_counts(state, dp: DataParallel) -> dict[str, int]:
    """Parameters per network of a device state (GANState: g and d; classifiers: net;
    CycleGANState: g_ab, g_ba, d_a and d_b)."""
    host = dp.get_state(state)

    def count(tree) -> int:
        return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))

    nets = {k: getattr(host, k) for k in NETWORKS if hasattr(host, k)}
    return {k: count(v.params) for k, v in nets.items()}


# ----------------------------------------------------------------------------- one model


def jax_figures(c: common.Contestant, peak_gflops: float | None) -> dict[str, Any]:
    out = common.result(c)
    flops = c.info.get("flops_per_step")
    if flops and out.get("ms_per_step"):
        achieved = flops / (out["ms_per_step"] / 1000) / 1e9
        out["gflops_per_step"] = round(flops / 1e9, 4)
        out["achieved_gflops"] = round(achieved, 2)
        if peak_gflops:
            out["fraction_of_f32_peak"] = round(achieved / peak_gflops, 4)
    return out


def count_convolutions(entry: dict[str, Any], peak_gflops: float | None) -> dict[str, Any]:
    """XLA's cost analysis gives a oneDNN custom call no FLOPs, so a step that holds them counts
    its convolutions as free. With the same step traced with XLA's convolutions in the entry
    (`--xla-conv`), its count, the same arithmetic, stands for both steps' GFLOP figures."""
    counted = (entry.get("jax_xla_conv") or {}).get("flops_per_step")
    if not isinstance(counted, (int, float)):
        return entry
    for name in ("jax", "jax_bfloat16"):
        row = entry.get(name)
        if isinstance(row, dict) and row.get("onednn_custom_calls") and row.get("ms_per_step"):
            achieved = counted / (row["ms_per_step"] / 1000) / 1e9
            row.update(flops_per_step=counted, gflops_per_step=round(counted / 1e9, 4),
                       achieved_gflops=round(achieved, 2),
                       flops_counted_on="the same step with XLA's convolutions")
            if peak_gflops:
                row["fraction_of_f32_peak"] = round(achieved / peak_gflops, 4)
    return entry


def bfloat16_step(config, args, log=print) -> JaxStep:
    """The same step computing in bfloat16 (parameters and optimizer state stay float32)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.dtype = "bfloat16"
    step = JaxStep(config, devices=args.devices, mode=args.parallel)
    log(f"  jax bfloat16 compile {step.compile_s:.1f} s")
    return step


def xla_conv_step(config, args, log=print) -> JaxStep:
    """The same step with XLA's convolutions: traced with the oneDNN extension switched off."""
    with mock.patch.dict(os.environ, {onednn.SWITCH_ENV: "0"}):  # read when traced
        step = JaxStep(config, devices=args.devices, mode=args.parallel)
    log(f"  jax with XLA's convolutions: compile {step.compile_s:.1f} s")
    return step


def ratios(entry: dict[str, Any]) -> dict[str, float]:
    """JAX images/s over each PyTorch contestant's, bfloat16 JAX over float32 JAX, and the
    step with the configured convolutions over the one with XLA's."""
    jax_rate = entry.get("jax", {}).get("images_per_s")
    out = {}
    bf16 = entry.get("jax_bfloat16")
    bf16_rate = bf16.get("images_per_s") if isinstance(bf16, dict) else None  # or a skip reason
    if jax_rate and bf16_rate:
        out["jax_bfloat16_over_jax"] = round(bf16_rate / jax_rate, 3)
    for name in ("jax_xla_conv", "torch_eager", "torch_compile"):
        other = entry.get(name)
        if jax_rate and isinstance(other, dict) and other.get("images_per_s"):
            out[f"jax_over_{name}"] = round(jax_rate / other["images_per_s"], 3)
    return out


def measure_model(config, args, peak_gflops: float | None, log=print) -> dict[str, Any]:
    """JAX and PyTorch rounds alternating, then the input pipeline, for one config."""
    step = JaxStep(config, devices=args.devices, mode=args.parallel)
    log(f"  jax compile {step.compile_s:.1f} s")
    contestants = [step.contestant()]
    skipped: dict[str, str] = {}
    if args.bfloat16 and "dtype" not in config.model:
        skipped["jax_bfloat16"] = "skipped: the model has no model.dtype setting"
    elif args.bfloat16:
        contestants.append(bfloat16_step(config, args, log).contestant("jax_bfloat16"))
    if args.xla_conv and not step.onednn_calls:
        skipped["jax_xla_conv"] = f"skipped: no convolution runs on oneDNN ({onednn.status()})"
    elif args.xla_conv:
        contestants.append(xla_conv_step(config, args, log).contestant("jax_xla_conv"))
    if args.no_torch:
        skipped["torch"] = "skipped: --no-torch"
    else:
        found, skipped = torch_baselines.contestants(
            config, compile=not args.no_torch_compile, channels_last=args.channels_last, log=log)
        contestants += found
    for c in contestants:
        common.warm_up(c, warmup=args.warmup, steps=args.steps, round_seconds=args.round_seconds)
    common.alternate(contestants, args.repeats, log)

    entry: dict[str, Any] = {"batch": common.batch_size(config),
                             "image_shape": [config.model.image_size] * 2 + [config.model.channels]}
    if is_cyclegan(config):
        # A step translates `batch` images each way: the rates count pairs (a, b), per step
        # `batch` of them, in JAX and PyTorch alike.
        entry["images_counted"] = "pairs: one image of each domain"
    for c in contestants:
        is_jax = c.name.startswith("jax")
        entry[c.name] = jax_figures(c, peak_gflops) if is_jax else common.result(c)
    count_convolutions(entry, peak_gflops)
    for c in contestants:
        r = entry[c.name]
        log(f"  {c.name:14s} {r.get('images_per_s', 0):9.1f} ± {r.get('images_per_s_std', 0):.1f}"
            f" images/s  {r.get('ms_per_step', 0):9.1f} ms/step"
            + (f"  {r['achieved_gflops']:.1f} GFLOP/s" if "achieved_gflops" in r else ""))
    entry.update(skipped)
    for name, reason in skipped.items():
        log(f"  {name}: {reason}")
    entry["ratios"] = ratios(entry)
    if is_cyclegan(config):
        entry["input"] = {"skipped": "skipped: two-stream (unpaired) input not measured here"}
    elif "schedule" in config:
        entry["input"] = {"skipped": "skipped: one input pipeline per resolution, not "
                                     "measured here"}
    elif not args.no_input:
        entry["input"] = input_pipeline.measure(
            config, step=step, warmup=args.warmup, steps=args.steps, repeats=args.repeats,
            round_seconds=args.round_seconds, log=log)
        entry["input"].update(input_bound(entry))
    entry["peak_rss_mb_so_far"] = common.peak_rss_mb()
    return entry


def input_bound(entry: dict[str, Any]) -> dict[str, Any]:
    """Whether the pipeline alone is slower than the step, and end to end versus the step."""
    step_rate = entry.get("jax", {}).get("images_per_s")
    pipe = entry.get("input", {}).get("input_pipeline", {}).get("images_per_s")
    e2e = entry.get("input", {}).get("end_to_end", {}).get("images_per_s")
    out: dict[str, Any] = {}
    if step_rate and pipe:
        out["input_bound"] = pipe < step_rate
    if step_rate and e2e:
        out["end_to_end_over_step"] = round(e2e / step_rate, 3)
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser)
    parser.add_argument("--devices", type=int, default=0,
                        help="JAX devices for the step (0: as train.py, one per CPU core on a "
                             "CPU, else 1)")
    parser.add_argument("--parallel", choices=MODES, default="shard_map")
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size of the peak")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="PyTorch eager only (torch.compile takes tens of seconds a model)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="PyTorch memory layout (auto: the faster one per model)")
    parser.add_argument("--bfloat16", action="store_true",
                        help="also time the JAX step computing in bfloat16 (float32 params)")
    parser.add_argument("--xla-conv", action="store_true",
                        help="also time the JAX step with XLA's convolutions (the oneDNN "
                             "extension switched off while it is traced)")
    parser.add_argument("--no-input", action="store_true",
                        help="skip the input pipeline and end-to-end measurements")
    common.add_common_args(parser)
    args = common.shrink_if_tiny(parser.parse_args(argv))
    if args.tiny:
        args.peak_size = min(args.peak_size, 256)
    return args


def main(argv=None, *, reexec: bool = False) -> dict:
    args = parse_args(argv)
    common.choose_devices(args, reexec=reexec)
    record = common.header("train_step", args)
    xla_peak = peak.xla_float32_peak(args.peak_size, repeats=2 if args.tiny else 3)
    record["xla_float32_peak"] = xla_peak
    print(f"float32 XLA matmul peak ({args.peak_size}²): {xla_peak.get('gflops_best')} GFLOP/s")
    record["results"] = {}
    for name, spec, config in common.model_configs(args):
        print(f"{name} ({spec}, batch {common.batch_size(config)})")
        record["results"][name] = {
            "config": spec, **measure_model(config, args, xla_peak.get("gflops_best")),
            "config_values": common.config_values(config)}
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main(reexec=True)
