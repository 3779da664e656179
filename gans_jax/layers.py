"""Layers shared by the GANs.

`ConvTranspose4x4` is the DCGAN upsampling layer: a transposed convolution with kernel 4,
stride 2, padding 1 (PyTorch's ``ConvTranspose2d(cin, cout, 4, 2, 1)``), which doubles H and W.
It has two exact formulations of the same function and parameters:
- "xla": ``lax.conv_transpose`` (an input-dilated convolution); what cuDNN runs best on GPUs.
- "subpixel": one stride-1 2x2 convolution that produces the four output phases (even/odd row x
  even/odd column) as channel groups, then interleaves them. On XLA's CPU backend the kernel
  gradient of the input-dilated convolution is tens of times slower than that of a regular
  convolution, so this form trains several times faster there.
"auto" picks "subpixel" on CPU and "xla" elsewhere.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")
# Output o = 2*i + k - 1. Even outputs 2m read inputs (m-1, m) through taps (3, 1); odd outputs
# 2m+1 read (m, m+1) through taps (2, 0). Per phase, the taps in input order:
_PHASE_TAPS = {0: (3, 1), 1: (2, 0)}


def conv_transpose_4x4(x: jax.Array, kernel: jax.Array, *, impl: str = "auto") -> jax.Array:
    """x [B, H, W, Cin], kernel [4, 4, Cin, Cout] -> [B, 2H, 2W, Cout].

    ``kernel[kh, kw, ci, co]`` equals PyTorch's ``ConvTranspose2d.weight[ci, co, kh, kw]``.
    """
    if impl == "auto":
        impl = "subpixel" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla":
        # conv_transpose with transpose_kernel expects [kh, kw, Cout, Cin] and flips it.
        return jax.lax.conv_transpose(x, jnp.swapaxes(kernel, 2, 3), (2, 2),
                                      ((2, 2), (2, 2)), dimension_numbers=_DIMS,
                                      transpose_kernel=True)
    if impl != "subpixel":
        raise ValueError(f"unknown impl '{impl}'; use 'auto', 'xla' or 'subpixel'")
    batch, height, width, _ = x.shape
    cout = kernel.shape[-1]
    phase_kernels = [kernel[jnp.array(_PHASE_TAPS[a])][:, jnp.array(_PHASE_TAPS[b])]
                     for a in (0, 1) for b in (0, 1)]
    stacked = jnp.concatenate(phase_kernels, axis=-1)  # [2, 2, Cin, 4 * Cout]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(padded, stacked, (1, 1), "VALID",
                                     dimension_numbers=_DIMS)  # [B, H+1, W+1, 4 * Cout]
    y = y.reshape(batch, height + 1, width + 1, 2, 2, cout)
    # Phase (a, b) of output row/column parity sits at offset (a, b) of the H+1 x W+1 grid.
    rows = [jnp.stack([y[:, a:a + height, b:b + width, a, b] for b in (0, 1)], axis=3)
            for a in (0, 1)]  # each [B, H, W, 2, Cout]
    return jnp.stack(rows, axis=2).reshape(batch, 2 * height, 2 * width, cout)


class ConvTranspose4x4(nn.Module):
    """Transposed convolution, kernel 4, stride 2, padding 1, no bias: doubles H and W."""

    features: int
    impl: str = "auto"
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (4, 4, x.shape[-1], self.features))
        return conv_transpose_4x4(x.astype(self.dtype), kernel.astype(self.dtype),
                                  impl=self.impl)
