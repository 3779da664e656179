"""Other ways to compute the DCGAN discriminator's k4 s2 convolutions, against oneDNN's direct one.

    python -m benchmarks.conv_forms             # the 64x64 DCGAN discriminator's layers
    python -m benchmarks.conv_forms --tiny      # small shapes, seconds (tests)

Asks whether less arithmetic can beat oneDNN's direct kernels on the CPU. A 4x4 stride-2
convolution (padding 1) is a 2x2 stride-1 convolution of the space-to-depth input (2x2 blocks
of pixels as 4x the channels), and a 2x2 convolution has Winograd forms: F(m, 2) computes m x m
outputs of a tile from (m + 1)^2 products instead of 4 m^2 (F(2, 2): 9 instead of 16, F(4, 2):
25 instead of 64), as (m + 1)^2 independent matrix products over the channels plus linear
transforms of the input tiles, the kernel and the output tiles. Forms timed, each as its forward
pass, input gradient and kernel gradient (the gradients by JAX's autodiff of the form):

- ``onednn``: the direct convolution through `common_jax.conv` (when `make onednn` built it);
- ``xla``: XLA's own convolution;
- ``winograd_f2``, ``winograd_f4``: space-to-depth + Winograd F(2, 2) / F(4, 2) in plain JAX (the
  matrix products are XLA's batched dot, the transforms its fused elementwise loops);
- ``winograd_f2_products``: F(2, 2)'s batched matrix products alone, the part that shrinks (a
  lower bound on that form's forward pass: its transforms cost nothing here);
- ``im2col``: space-to-depth, the four shifted views side by side, one matrix product.

Contestants alternate in rounds within one process after one untimed call (compilation).
Writes benchmarks/results/conv_forms_<tag>.json.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from benchmarks import common

# (batch, input size, input channels, output channels) of the 64x64 DCGAN discriminator's
# k4 s2 layers (its batch of 64); the 8 -> 4 one is also the generator's 4 -> 8 layer mirrored.
SHAPES = {
    "dcgan64 D 32->16 (64->128)": (64, 32, 64, 128),
    "dcgan64 D 16->8 (128->256)": (64, 16, 128, 256),
    "dcgan64 D 8->4 (256->512)": (64, 8, 256, 512),
}
TINY_SHAPES = {"tiny 8->4 (4->8)": (2, 8, 4, 8)}
PARTS = ("forward", "grad_input", "grad_kernel")

# Finite interpolation points of the Toom-Cook construction (the last point is infinity).
_POINTS = {2: (0.0, 1.0), 4: (0.0, 1.0, -1.0, 2.0)}


def winograd_matrices(m: int, r: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(BT, G, AT) of F(m, r) for correlation, y = AT [(G g) * (BT d)] over a tile d of
    m + r - 1 inputs, from the Toom-Cook construction of linear convolution transposed."""
    n = m + r - 1

    def evaluation(columns: int) -> np.ndarray:  # polynomial coefficients -> values at points
        rows = [[p**k for k in range(columns)] for p in _POINTS[m][: n - 1]]
        return np.array(rows + [[0.0] * (columns - 1) + [1.0]])

    return np.linalg.inv(evaluation(n)).T, evaluation(r), evaluation(m).T


def _combine(coefficients: np.ndarray, terms: list):
    """sum_i c_i * terms_i with the zero coefficients left out (XLA fuses the rest)."""
    total = None
    for c, term in zip(coefficients, terms, strict=True):
        if abs(c) > 1e-12:
            scaled = term if c == 1 else -term if c == -1 else term * np.float32(c)
            total = scaled if total is None else total + scaled
    return total


def space_to_depth_input(x):
    """(N, H, W, C) padded by 1 -> (N, H/2 + 1, W/2 + 1, 4C), 2x2 pixel blocks as channels."""
    import jax.numpy as jnp

    n, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = x.reshape(n, h // 2 + 1, 2, w // 2 + 1, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // 2 + 1, w // 2 + 1, 4 * c)


def space_to_depth_kernel(k):
    """(4, 4, C, O) -> (2, 2, 4C, O), the kernel of the same convolution on those blocks."""
    _, _, c, o = k.shape
    return k.reshape(2, 2, 2, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, o)


def _tiles(x, axis: int, m: int, count: int) -> list:
    """The m + 1 strided views of `x` along `axis` whose i-th holds the i-th input of each tile."""
    from jax import lax

    views = []
    for i in range(m + 1):
        start = [0] * x.ndim
        limit = list(x.shape)
        strides = [1] * x.ndim
        start[axis], limit[axis], strides[axis] = i, i + (count - 1) * m + 1, m
        views.append(lax.slice(x, start, limit, strides))
    return views


def winograd_products(v, u):
    """The (m + 1)^2 independent matrix products: (T, P, C) x (T, C, O) -> (T, P, O)."""
    from jax import lax

    return lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))


def winograd_conv_2x2(x, k, m: int):
    """Valid 2x2 correlation of x (N, H, W, C) with k (2, 2, C, O) by Winograd F(m, 2)."""
    import jax.numpy as jnp

    bt, g, at = winograd_matrices(m)
    n_tile = m + 1
    batch, h, w, c = x.shape
    rows, cols = (h - 1) // m, (w - 1) // m
    if rows * m != h - 1 or cols * m != w - 1:
        raise ValueError(f"F({m}, 2) needs outputs that are multiples of {m}, got {h - 1}")
    by_row = [_combine(bt[a], _tiles(x, 1, m, rows)) for a in range(n_tile)]
    v = [_combine(bt[b], _tiles(r, 2, m, cols)) for r in by_row for b in range(n_tile)]
    v = jnp.stack(v).reshape(n_tile**2, batch * rows * cols, c)
    g = jnp.asarray(g, x.dtype)
    u = jnp.einsum("ai,ijco,bj->abco", g, k, g).reshape(n_tile**2, c, -1)
    products = winograd_products(v, u)
    products = products.reshape(n_tile, n_tile, batch, rows, cols, -1)
    out_rows = [_combine(at[i], list(products)) for i in range(m)]
    out = [[_combine(at[j], [r[b] for b in range(n_tile)]) for j in range(m)] for r in out_rows]
    out = jnp.stack([jnp.stack(r) for r in out])  # (m, m, N, rows, cols, O)
    return out.transpose(2, 3, 0, 4, 1, 5).reshape(batch, rows * m, cols * m, -1)


def im2col_conv_2x2(x, k):
    """The same correlation as one matrix product over the four shifted views."""
    import jax.numpy as jnp

    batch, h, w, c = x.shape
    views = [x[:, a:a + h - 1, b:b + w - 1] for a in range(2) for b in range(2)]
    patches = jnp.concatenate(views, axis=-1).reshape(-1, 4 * c)
    return (patches @ k.reshape(4 * c, -1)).reshape(batch, h - 1, w - 1, -1)


def forms() -> dict[str, Callable]:
    """Each form as f(x, k4x4) of the k4 s2 p1 convolution (NHWC, HWIO)."""
    from jax import lax

    from common_jax import conv as onednn_conv

    dn = ("NHWC", "HWIO", "NHWC")
    pads = ((1, 1), (1, 1))

    def blocked(inner):
        return lambda x, k: inner(space_to_depth_input(x), space_to_depth_kernel(k))

    out = {"xla": lambda x, k: lax.conv_general_dilated(x, k, (2, 2), pads,
                                                        dimension_numbers=dn),
           "winograd_f2": blocked(lambda x, k: winograd_conv_2x2(x, k, 2)),
           "winograd_f4": blocked(lambda x, k: winograd_conv_2x2(x, k, 4)),
           "im2col": blocked(im2col_conv_2x2)}
    if onednn_conv.onednn_active():
        out["onednn"] = lambda x, k: onednn_conv.conv_general_dilated(
            x, k, (2, 2), pads, dimension_numbers=dn)
    return out


def part_functions(form: Callable) -> dict[str, Callable]:
    import jax

    def grad_input(x, k, dy):
        return jax.vjp(lambda x_: form(x_, k), x)[1](dy)[0]

    def grad_kernel(x, k, dy):
        return jax.vjp(lambda k_: form(x, k_), k)[1](dy)[0]

    return {"forward": jax.jit(lambda x, k, dy: form(x, k)), "grad_input": jax.jit(grad_input),
            "grad_kernel": jax.jit(grad_kernel)}


def layer_data(shape: tuple[int, ...]):
    import jax

    batch, size, cin, cout = shape
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(keys[0], (batch, size, size, cin))
    k = jax.random.normal(keys[1], (4, 4, cin, cout)) * 0.05
    dy = jax.random.normal(keys[2], (batch, size // 2, size // 2, cout))
    return x, k, dy


def contestants(shape: tuple[int, ...]) -> list[common.Contestant]:
    import jax
    import jax.numpy as jnp

    x, k, dy = layer_data(shape)
    out = []

    def contestant(name, part, fn, args):
        def run(n: int) -> None:
            y = None
            for _ in range(n):
                y = fn(*args)
            jax.block_until_ready(y)

        return common.Contestant(f"{name} {part}", run, images_per_step=shape[0],
                                 info={"form": name, "part": part})

    for name, form in forms().items():
        for part, fn in part_functions(form).items():
            out.append(contestant(name, part, fn, (x, k, dy)))
    if shape[1] // 2 % 2 == 0:  # F(2, 2)'s products, of the shapes its forward pass multiplies
        tiles = shape[0] * (shape[1] // 4) ** 2
        v = jnp.ones((9, tiles, 4 * shape[2]))
        u = jnp.ones((9, 4 * shape[2], shape[3]))
        out.append(contestant("winograd_f2_products", "forward", jax.jit(winograd_products),
                              (v, u)))
    return out


def main(argv=None) -> dict:
    args = common.operation_args(__doc__, argv)
    from common_jax import onednn

    record = common.header("conv_forms", args)
    record["results"] = {}
    shapes = TINY_SHAPES if args.tiny else SHAPES
    for label, rows in common.time_per_shape(shapes, contestants, args):
        print(label)
        for part in PARTS:
            found = {r["form"]: r.get("ms_per_step") for r in rows.values()
                     if r["part"] == part}
            print(f"  {part:12s} " + ", ".join(f"{f} {ms} ms" for f, ms in found.items()))
        record["results"][label] = rows
    record["onednn"] = onednn.status()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main()
