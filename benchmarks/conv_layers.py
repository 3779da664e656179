"""Where a train step's time goes: each convolution's forward pass, input gradient and kernel
gradient, timed alone on XLA and on PyTorch, side by side.

    python -m benchmarks.conv_layers            # the layer shapes of the models here
    python -m benchmarks.conv_layers --tiny     # seconds (tests)

For every layer shape (the DCGAN 64x64 discriminator's strided convs, the generator's transposed
convs in XLA's form and in the sub-pixel form the models use on CPU, the classifier's 3x3 convs)
it times, on one batch already in memory: the forward pass,
the gradient with respect to the input and the gradient with respect to the kernel, each as its
own compiled function (XLA) or its own autograd call (PyTorch eager, channels-last, the faster
layout there). Rounds alternate between the two frameworks. Reports milliseconds (median of the
repeats), GFLOP/s by formula, and the XLA/PyTorch time ratio per part. Writes a JSON record to
benchmarks/results/conv_layers_<tag>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks import common
from gans_jax.layers import conv_transpose_4x4

PARTS = ("forward", "grad_input", "grad_kernel")


@dataclass(frozen=True)
class Layer:
    name: str
    batch: int
    size: int  # input height = width
    cin: int
    cout: int
    kernel: int
    stride: int
    transposed: bool = False
    impl: str = "xla"  # transposed k4 s2: "xla" (lax.conv_transpose) or "subpixel" (ours on CPU)

    @property
    def out_size(self) -> int:
        return self.size * self.stride if self.transposed else self.size // self.stride

    def flops(self) -> float:
        """Multiply-adds x 2 of the forward pass (each gradient costs about the same)."""
        positions = self.size if self.transposed else self.out_size
        return 2.0 * self.batch * positions**2 * self.kernel**2 * self.cin * self.cout


LAYERS = (
    Layer("dcgan64 D conv 32->16 (64->128)", 64, 32, 64, 128, 4, 2),
    Layer("dcgan64 D conv 16->8 (128->256)", 64, 16, 128, 256, 4, 2),
    Layer("dcgan64 G tconv 16->32 (128->64), XLA form", 64, 16, 128, 64, 4, 2, True),
    Layer("dcgan64 G tconv 16->32 (128->64), sub-pixel form", 64, 16, 128, 64, 4, 2, True,
          "subpixel"),
    Layer("dcgan64 G tconv 8->16 (256->128), sub-pixel form", 64, 8, 256, 128, 4, 2, True,
          "subpixel"),
    Layer("mnist cnn 3x3 28x28 (32->32)", 128, 28, 32, 32, 3, 1),
    Layer("mnist cnn 3x3 14x14 (64->64)", 128, 14, 64, 64, 3, 1),
)
TINY = (Layer("tiny conv", 2, 8, 4, 8, 4, 2), Layer("tiny tconv", 2, 4, 8, 4, 4, 2, True),
        Layer("tiny tconv sub-pixel", 2, 4, 8, 4, 4, 2, True, "subpixel"))


def _padding(layer: Layer) -> tuple[tuple[int, int], ...]:
    pad = (layer.kernel - 1) // 2 if layer.stride == 1 else (layer.kernel - layer.stride) // 2
    return ((pad, pad), (pad, pad))


def xla_functions(layer: Layer):
    """Compiled forward, input-gradient and kernel-gradient functions of one layer (NHWC)."""
    dn = ("NHWC", "HWIO", "NHWC")

    def forward(x, w):
        if layer.transposed:  # the generator's layer, in the form named
            return conv_transpose_4x4(x, w, impl=layer.impl)
        return lax.conv_general_dilated(x, w, (layer.stride,) * 2, _padding(layer),
                                        dimension_numbers=dn)

    def grad_input(x, w, dy):
        return jax.vjp(lambda x_: forward(x_, w), x)[1](dy)[0]

    def grad_kernel(x, w, dy):
        return jax.vjp(lambda w_: forward(x, w_), w)[1](dy)[0]

    return {"forward": jax.jit(forward), "grad_input": jax.jit(grad_input),
            "grad_kernel": jax.jit(grad_kernel)}


def time_xla(layer: Layer, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((layer.batch, layer.size, layer.size, layer.cin)),
                    jnp.float32)
    w = jnp.asarray(rng.standard_normal((layer.kernel, layer.kernel, layer.cin, layer.cout)) *
                    0.05, jnp.float32)
    fns = xla_functions(layer)
    dy = jnp.ones_like(fns["forward"](x, w))
    args = {"forward": (x, w), "grad_input": (x, w, dy), "grad_kernel": (x, w, dy)}
    out = {}
    for part in PARTS:
        jax.block_until_ready(fns[part](*args[part]))  # compile + warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fns[part](*args[part]))
            times.append(time.perf_counter() - start)
        out[part] = statistics.median(times) * 1e3
    return out


def time_torch(layer: Layer, repeats: int) -> dict[str, float] | None:
    torch = common.import_torch()
    if torch is None:
        return None
    torch.manual_seed(0)
    cl = torch.channels_last
    if layer.transposed:
        conv = torch.nn.ConvTranspose2d(layer.cin, layer.cout, layer.kernel, layer.stride, 1,
                                        bias=False)
    else:
        conv = torch.nn.Conv2d(layer.cin, layer.cout, layer.kernel, layer.stride,
                               _padding(layer)[0][0], bias=False)
    conv = conv.to(memory_format=cl)
    x = torch.randn(layer.batch, layer.cin, layer.size, layer.size).to(memory_format=cl)

    def forward():
        with torch.no_grad():
            return conv(x)

    def grad(of_input: bool):
        def run():
            xi = x.detach().requires_grad_(of_input)
            conv.weight.requires_grad_(not of_input)
            y = conv(xi)
            return torch.autograd.grad(y, xi if of_input else conv.weight,
                                       torch.ones_like(y))
        return run

    fns = {"forward": forward, "grad_input": grad(True), "grad_kernel": grad(False)}
    out = {}
    for part in PARTS:
        fns[part]()  # warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fns[part]()
            times.append(time.perf_counter() - start)
        out[part] = statistics.median(times) * 1e3
    return out


def measure(layers, repeats: int, rounds: int) -> list[dict]:
    """Alternates XLA and PyTorch rounds per layer; keeps each part's best round."""
    rows = []
    for layer in layers:
        best = {"xla": {}, "torch": {}}
        for _ in range(rounds):
            for name, timer in (("xla", time_xla), ("torch", time_torch)):
                result = timer(layer, repeats)
                if result is None:
                    best[name] = None
                    continue
                for part, ms in result.items():
                    best[name][part] = min(ms, best[name].get(part, float("inf")))
        row = {"layer": asdict(layer), "gflop": layer.flops() / 1e9, "xla_ms": best["xla"],
               "torch_ms": best["torch"]}
        row["xla_gflops"] = {p: layer.flops() / (ms * 1e6) for p, ms in best["xla"].items()}
        if best["torch"]:
            row["xla_over_torch_time"] = {p: best["xla"][p] / best["torch"][p] for p in PARTS}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    parts = []
    for p in PARTS:
        torch_ms = row["torch_ms"][p] if row["torch_ms"] else float("nan")
        parts.append(f"{p} {row['xla_ms'][p]:.1f}/{torch_ms:.1f} ms")
    return f"{row['layer']['name']}: XLA/PyTorch " + ", ".join(parts)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    layers = TINY if args.tiny else LAYERS
    repeats, rounds = (2, 1) if args.tiny else (args.repeats, args.rounds)
    rows = measure(layers, repeats, rounds)
    result = {**common.header("conv_layers", args), "repeats": repeats, "rounds": rounds,
              "layers": rows}
    common.write_record(result, args)
    return result


if __name__ == "__main__":
    main()
