"""Where a train step's time goes: each convolution's forward pass, input gradient and kernel
gradient, timed alone on XLA, on oneDNN through our custom calls, and on PyTorch, side by side.

    python -m benchmarks.conv_layers            # the layer shapes of the models here
    python -m benchmarks.conv_layers --dtype bfloat16
    python -m benchmarks.conv_layers --tiny     # seconds (tests)

For every layer shape (the DCGAN 64x64 discriminator's strided convs, the generator's transposed
convs in XLA's form and in the sub-pixel form the models use on CPU, the classifier's 3x3 convs)
it times, on one batch already in memory: the forward pass, the gradient with respect to the
input and the gradient with respect to the kernel, each as its own compiled function (XLA; the
oneDNN custom calls of `common_jax.conv`, when `make onednn` has built them) or its own operator
call (PyTorch eager, channels-last, the faster layout there: ``aten.convolution`` and
``aten.convolution_backward`` asked for one gradient, so no part includes another). The oneDNN
column computes a transposed layer in its direct form (the input gradient of the mirror
convolution) whatever the XLA column's form. Rounds alternate between the three; each part's
figure is the median over rounds of each round's median. Reports milliseconds, GFLOP/s by
formula, and time ratios to PyTorch. Writes a JSON record to
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
from common_jax import conv as onednn_conv
from common_jax import onednn
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

    return _parts(forward)


def onednn_functions(layer: Layer):
    """The same three functions through `common_jax.conv` (oneDNN custom calls), or None when
    the extension is not built. A transposed layer runs in its direct form."""
    if not onednn_conv.onednn_active():
        return None
    dn = ("NHWC", "HWIO", "NHWC")

    def forward(x, w):
        if layer.transposed:  # as gans_jax.layers' "xla" form: padding k - 1 - 1 (PyTorch's 1)
            pad = layer.kernel - 2
            return onednn_conv.conv_transpose(x, jnp.swapaxes(w, 2, 3), (layer.stride,) * 2,
                                              ((pad, pad),) * 2, dimension_numbers=dn,
                                              transpose_kernel=True)
        return onednn_conv.conv_general_dilated(x, w, (layer.stride,) * 2, _padding(layer),
                                                dimension_numbers=dn)

    return _parts(forward)


def _parts(forward):
    def grad_input(x, w, dy):
        return jax.vjp(lambda x_: forward(x_, w), x)[1](dy)[0]

    def grad_kernel(x, w, dy):
        return jax.vjp(lambda w_: forward(x, w_), w)[1](dy)[0]

    return {"forward": jax.jit(forward), "grad_input": jax.jit(grad_input),
            "grad_kernel": jax.jit(grad_kernel)}


def layer_data(layer: Layer, dtype) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((layer.batch, layer.size, layer.size, layer.cin)), dtype)
    w = jnp.asarray(rng.standard_normal((layer.kernel, layer.kernel, layer.cin, layer.cout)) *
                    0.05, dtype)
    return x, w


def time_jax(fns, layer: Layer, repeats: int, dtype) -> dict[str, float] | None:
    if fns is None:
        return None
    x, w = layer_data(layer, dtype)
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


def time_torch(layer: Layer, repeats: int, dtype) -> dict[str, float] | None:
    """PyTorch's operators themselves, each part alone (autograd would add the forward pass to
    the gradients' time)."""
    torch = common.import_torch()
    if torch is None:
        return None
    torch.manual_seed(0)
    cl = torch.channels_last
    tdtype = getattr(torch, jnp.dtype(dtype).name)
    shape = ((layer.cin, layer.cout) if layer.transposed else (layer.cout, layer.cin)) + \
        (layer.kernel,) * 2
    x = torch.randn(layer.batch, layer.cin, layer.size, layer.size).to(tdtype, memory_format=cl)
    w = (torch.randn(shape) * 0.05).to(tdtype, memory_format=cl)
    pad = 1 if layer.transposed else _padding(layer)[0][0]
    window = ([layer.stride] * 2, [pad] * 2, [1, 1], layer.transposed, [0, 0], 1)
    with torch.no_grad():
        dy = torch.ones_like(torch.ops.aten.convolution(x, w, None, *window))

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, *window, mask)

    fns = {"forward": lambda: torch.ops.aten.convolution(x, w, None, *window),
           "grad_input": backward([True, False, False]),
           "grad_kernel": backward([False, True, False])}
    out = {}
    with torch.no_grad():
        for part in PARTS:
            fns[part]()  # warm up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fns[part]()
                times.append(time.perf_counter() - start)
            out[part] = statistics.median(times) * 1e3
    return out


BACKENDS = ("xla", "onednn", "torch")


def measure(layers, repeats: int, rounds: int, dtype) -> list[dict]:
    """Alternates XLA, oneDNN and PyTorch rounds per layer; each part's median over rounds."""
    rows = []
    for layer in layers:
        fns = {"xla": xla_functions(layer), "onednn": onednn_functions(layer)}
        rounds_ms: dict[str, list] = {name: [] for name in BACKENDS}
        for _ in range(rounds):
            for name in BACKENDS:
                result = (time_torch(layer, repeats, dtype) if name == "torch" else
                          time_jax(fns[name], layer, repeats, dtype))
                if result is not None:
                    rounds_ms[name].append(result)
        row = {"layer": asdict(layer), "gflop": layer.flops() / 1e9}
        for name in BACKENDS:
            row[f"{name}_ms"] = ({p: statistics.median(r[p] for r in rounds_ms[name])
                                  for p in PARTS} if rounds_ms[name] else None)
        row["xla_gflops"] = {p: layer.flops() / (ms * 1e6) for p, ms in row["xla_ms"].items()}
        for name in ("xla", "onednn"):
            if row["torch_ms"] and row[f"{name}_ms"]:
                row[f"{name}_over_torch_time"] = {
                    p: row[f"{name}_ms"][p] / row["torch_ms"][p] for p in PARTS}
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    parts = []
    for p in PARTS:
        ms = [row[f"{name}_ms"][p] if row[f"{name}_ms"] else float("nan") for name in BACKENDS]
        parts.append(f"{p} " + "/".join(f"{v:.1f}" for v in ms) + " ms")
    return f"{row['layer']['name']}: XLA/oneDNN/PyTorch " + ", ".join(parts)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    common.import_torch()  # first: it sets OpenMP's wait policy for every OpenMP runtime
    layers = TINY if args.tiny else LAYERS
    repeats, rounds = (2, 1) if args.tiny else (args.repeats, args.rounds)
    print(f"oneDNN extension: {onednn.status()}")
    rows = measure(layers, repeats, rounds, jnp.dtype(args.dtype))
    result = {**common.header("conv_layers", args), "repeats": repeats, "rounds": rounds,
              "dtype": args.dtype, "onednn": onednn.status(), "layers": rows}
    common.write_record(result, args)
    return result


if __name__ == "__main__":
    main()
