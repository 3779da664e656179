"""2x2 max pooling with stride 2 as plain element-wise work, for XLA's CPU back end.

``nn.max_pool(x, (2, 2), strides=(2, 2))`` lowers to a ``reduce-window`` whose gradient is a
``select-and-scatter``, which XLA's CPU back end rewrites into an iota, a variadic
``reduce-window`` and a scatter over the whole input: 8-24x slower than this module's gradient
at the classifiers' shapes (docs/benchmarks.md, "Max pooling"; the forward passes are level).
`max_pool_2x2` computes the same values from the four strided views of each window, which XLA
fuses into one loop, and keeps the position of each window's maximum (int8, a quarter of the
input's elements) for the gradient.

Values equal ``nn.max_pool``'s (VALID padding: an odd last row or column is dropped). The
gradient goes to the first maximum of each window in row-major order, as ``select-and-scatter``
sends it, so ties (zeros after a ReLU) are treated alike too. Taking the position from the
forward pass, rather than comparing the input with the output again as ``jnp.max``'s gradient
does, means an input XLA recomputes a hair differently inside another fusion still gets its
gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _corners(x: jax.Array) -> list[jax.Array]:
    """The four positions of every 2x2 window of [..., H, W, C] (H, W even), row-major."""
    *lead, h, w, c = x.shape
    windows = x.reshape(*lead, h // 2, 2, w // 2, 2, c)
    return [windows[..., i, :, j, :] for i in (0, 1) for j in (0, 1)]


def _pool_with_position(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    corners = _corners(x)
    top = jnp.maximum(jnp.maximum(corners[0], corners[1]), jnp.maximum(corners[2], corners[3]))
    # The first corner that holds the maximum: later matches are overwritten by earlier ones.
    # A window with a NaN matches nowhere and sends its gradient to corner 0.
    position = jnp.zeros(top.shape, jnp.int8)
    for k in (3, 2, 1, 0):
        position = jnp.where(corners[k] == top, jnp.int8(k), position)
    return top, position


@jax.custom_vjp
def _pool_even(x: jax.Array) -> jax.Array:
    return _pool_with_position(x)[0]


def _pool_even_bwd(position, g):
    # Each window's gradient to the corner the forward pass chose: one broadcast compare.
    *lead, half_h, half_w, c = g.shape
    corner = (2 * jnp.arange(2, dtype=jnp.int8)[:, None, None, None]
              + jnp.arange(2, dtype=jnp.int8)[:, None])  # [2, 1, 2, 1]: row i, column j
    chosen = position[..., :, None, :, None, :] == corner
    windows = jnp.where(chosen, g[..., :, None, :, None, :], jnp.zeros((), g.dtype))
    return (windows.reshape(*lead, 2 * half_h, 2 * half_w, c),)


_pool_even.defvjp(_pool_with_position, _pool_even_bwd)  # residual: the positions


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """``nn.max_pool(x, (2, 2), strides=(2, 2))`` for [..., H, W, C] inputs (see the module)."""
    if x.ndim < 3:
        raise ValueError(f"max_pool_2x2 takes [..., H, W, C] inputs, got shape {x.shape}")
    h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
    if (h, w) != x.shape[-3:-1]:
        x = x[..., :h, :w, :]  # VALID padding drops an odd last row or column
    return _pool_even(x)
