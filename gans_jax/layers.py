"""Layers shared by the GANs.

`ConvTranspose4x4` is the DCGAN upsampling layer: a transposed convolution with kernel 4,
stride 2, padding 1 (PyTorch's ``ConvTranspose2d(cin, cout, 4, 2, 1)``), which doubles H and W.
It has two exact formulations of the same function and parameters:
- "xla": ``lax.conv_transpose`` (an input-dilated convolution); what cuDNN runs best on GPUs.
- "subpixel": one stride-1 2x2 convolution that produces the four output phases (even/odd row x
  even/odd column) as channel groups, then interleaves them. On XLA's CPU backend the kernel
  gradient of the input-dilated convolution is tens of times slower than that of a regular
  convolution, so this form trains several times faster there.
"auto" picks "subpixel" on a CPU whose convolutions are XLA's and "xla" elsewhere: with the
oneDNN extension (`common_jax.conv`) the input-dilated form runs as oneDNN's strided backward-data
kernel, as PyTorch's ConvTranspose2d does, and its kernel gradient is a regular one
(docs/benchmarks.md, "The transposed convolution's form").

Below it are the layer choices a GAN config can switch: `Upsample` (UPSAMPLE methods),
`Downsample` (DOWNSAMPLE methods, optional spectral norm) and `make_norm` (NORMS).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax import conv as common_conv
from common_jax.batch_norm import BatchNorm
from common_jax.errors import UserError

_DIMS = ("NHWC", "HWIO", "NHWC")
# Output o = 2*i + k - 1. Even outputs 2m read inputs (m-1, m) through taps (3, 1); odd outputs
# 2m+1 read (m, m+1) through taps (2, 0). Per phase, the taps in input order:
_PHASE_TAPS = {0: (3, 1), 1: (2, 0)}


def resolve_impl(impl: str) -> str:
    """"auto" -> the form that trains faster on the backend a trace runs for (the module)."""
    if impl != "auto":
        return impl
    if jax.default_backend() == "cpu" and not common_conv.onednn_active():
        return "subpixel"
    return "xla"


def conv_transpose_4x4(x: jax.Array, kernel: jax.Array, *, impl: str = "auto") -> jax.Array:
    """x [B, H, W, Cin], kernel [4, 4, Cin, Cout] -> [B, 2H, 2W, Cout].

    ``kernel[kh, kw, ci, co]`` equals PyTorch's ``ConvTranspose2d.weight[ci, co, kh, kw]``.
    """
    impl = resolve_impl(impl)
    if impl == "xla":
        # conv_transpose with transpose_kernel expects [kh, kw, Cout, Cin] and flips it.
        return common_conv.conv_transpose(x, jnp.swapaxes(kernel, 2, 3), (2, 2),
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
    y = common_conv.conv_general_dilated(padded, stacked, (1, 1), "VALID",
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


# ----------------------------------------------------------------------------------------------
# Layer choices a GAN config can switch: upsampling, downsampling, normalisation.

UPSAMPLE = ("transpose4", "transpose3", "nearest", "bilinear", "pixel_shuffle")
DOWNSAMPLE = ("strided", "avg_pool")
NORMS = ("batch", "instance", "pixel", "layer", "none")
_IMPLS = ("auto", "xla", "subpixel")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {what} '{value}'; choose one of {', '.join(choices)}")


def conv_transpose_3x3(x: jax.Array, kernel: jax.Array, *, impl: str = "xla") -> jax.Array:
    """x [B, H, W, Cin], kernel [3, 3, Cin, Cout] -> [B, 2H, 2W, Cout].

    PyTorch's ``ConvTranspose2d(k=3, s=2, p=1, output_padding=1)``: output o = 2*i + k - 1,
    kept for 0 <= o < 2H. The dilated input is padded by k-1-p = 1 before and 1+1 after.
    `impl` as for `conv_transpose_4x4`; "xla" is the default here ("subpixel" is opt-in).
    """
    impl = resolve_impl(impl)
    if impl == "subpixel":
        return _conv_transpose_3x3_subpixel(x, kernel)
    if impl != "xla":
        raise ValueError(f"unknown impl '{impl}'; use 'auto', 'xla' or 'subpixel'")
    return common_conv.conv_transpose(x, jnp.swapaxes(kernel, 2, 3), (2, 2), ((1, 2), (1, 2)),
                                  dimension_numbers=_DIMS, transpose_kernel=True)


# k3 s2 p1: even outputs 2m read input m through tap 1; odd outputs 2m+1 read inputs (m, m+1)
# through taps (2, 0). Per phase, the tap of each of the two inputs (m, m+1); None: no tap.
_PHASE_TAPS_3 = {0: (1, None), 1: (2, 0)}


def _conv_transpose_3x3_subpixel(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """`conv_transpose_3x3` as one stride-1 2x2 convolution giving the four output phases as
    channel groups, interleaved afterwards (the form XLA's CPU backend differentiates fast)."""
    batch, height, width, _ = x.shape
    cin, cout = kernel.shape[2:]
    zero = jnp.zeros((cin, cout), kernel.dtype)

    def tap(a: int, b: int, dy: int, dx: int) -> jax.Array:
        ky, kx = _PHASE_TAPS_3[a][dy], _PHASE_TAPS_3[b][dx]
        return zero if ky is None or kx is None else kernel[ky, kx]

    phases = [jnp.stack([jnp.stack([tap(a, b, dy, dx) for dx in (0, 1)]) for dy in (0, 1)])
              for a in (0, 1) for b in (0, 1)]  # each [2, 2, Cin, Cout]
    stacked = jnp.concatenate(phases, axis=-1)  # [2, 2, Cin, 4 * Cout]
    padded = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # input H, W past the edge: zero
    y = common_conv.conv_general_dilated(padded, stacked, (1, 1), "VALID",
                                     dimension_numbers=_DIMS)  # [B, H, W, 4 * Cout]
    y = y.reshape(batch, height, width, 2, 2, cout)  # phase (a, b) -> output (2m+a, 2n+b)
    return y.transpose(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, cout)


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 convolution with SAME padding; kernel [kh, kw, Cin, Cout]."""
    return common_conv.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=_DIMS)


def depth_to_space(x: jax.Array, block: int = 2) -> jax.Array:
    """[B, H, W, C * r*r] -> [B, rH, rW, C] with PyTorch's PixelShuffle order: input channel
    ``c*r*r + i*r + j`` goes to output pixel ``(r*h + i, r*w + j)`` of channel c."""
    batch, height, width, channels = x.shape
    out = channels // (block * block)
    x = x.reshape(batch, height, width, out, block, block)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # [B, H, i, W, j, C]
    return x.reshape(batch, height * block, width * block, out)


def icnr(base_init: nn.initializers.Initializer, phases: int = 4) -> nn.initializers.Initializer:
    """ICNR (Aitken et al. 2017): initialise one sub-kernel and repeat it for every phase.

    Before depth_to_space each output channel's `phases` sub-pixel channels are then equal, so
    the pixel shuffle starts as resize-convolution (nearest upsampling): no checkerboard.
    """

    def init(key, shape, dtype=jnp.float32):
        sub = base_init(key, (*shape[:-1], shape[-1] // phases), dtype)
        return jnp.repeat(sub, phases, axis=-1)  # channel c*phases + p <- sub-kernel c

    return init


class Upsample(nn.Module):
    """Doubles H and W and maps to `features` channels (no bias).

    Methods (`UPSAMPLE`); the one parameter is "kernel", so "transpose4" has exactly the
    parameters of `ConvTranspose4x4` (a DCGAN can switch to this module without changing its
    parameter tree):
    - "transpose4": transposed conv k4 s2 p1, `ConvTranspose4x4` (`impl` picks its form).
    - "transpose3": transposed conv k3 s2 (PyTorch p=1, output_padding=1). Kernel size not
      divisible by the stride gives uneven overlap: checkerboard artifacts (Odena et al. 2016).
    - "nearest" / "bilinear": resize x2 then a 3x3 conv, Odena et al.'s resize-convolution.
    - "pixel_shuffle": 3x3 conv to 4*features channels then depth_to_space (sub-pixel conv,
      Shi et al. 2016), ICNR-initialised so it starts free of checkerboard.
    """

    features: int
    method: str = "transpose4"
    impl: str = "auto"  # transpose4 only; see conv_transpose_4x4
    # transpose3's form; "xla" unless asked for (the CycleGAN passes its model.upsample_impl)
    transpose3_impl: str = "xla"
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check_choice("upsampling method", self.method, UPSAMPLE)
        _check_choice("upsampling impl", self.impl, _IMPLS)
        cin, x = x.shape[-1], x.astype(self.dtype)
        if self.method == "transpose4":
            kernel = self.param("kernel", self.kernel_init, (4, 4, cin, self.features))
            return conv_transpose_4x4(x, kernel.astype(self.dtype), impl=self.impl)
        if self.method == "transpose3":
            kernel = self.param("kernel", self.kernel_init, (3, 3, cin, self.features))
            return conv_transpose_3x3(x, kernel.astype(self.dtype), impl=self.transpose3_impl)
        if self.method == "pixel_shuffle":
            kernel = self.param("kernel", icnr(self.kernel_init), (3, 3, cin, 4 * self.features))
            return depth_to_space(conv_same(x, kernel.astype(self.dtype)))
        kernel = self.param("kernel", self.kernel_init, (3, 3, cin, self.features))
        batch, height, width, _ = x.shape
        x = jax.image.resize(x, (batch, 2 * height, 2 * width, cin), method=self.method)
        return conv_same(x, kernel.astype(self.dtype))


class Downsample(nn.Module):
    """Halves H and W and maps to `features` channels (no bias).

    Methods (`DOWNSAMPLE`); the convolution is the submodule "conv":
    - "strided": conv k4 s2 p1, the DCGAN discriminator's layer (kernel [4, 4, Cin, Cout]).
    - "avg_pool": 3x3 SAME conv then 2x2 average pooling.
    `spectral_norm` divides the kernel by its largest singular value, estimated by power
    iteration (Miyato et al. 2018), which bounds the layer's Lipschitz constant. Flax's
    SpectralNorm keeps the power-iteration vector `u` and `sigma` in the "batch_stats"
    collection (under "SpectralNorm_0"), so apply with ``mutable=["batch_stats"]`` when
    ``train=True`` (which advances the power iteration), as for batch norm. Flax quirk: at init
    SpectralNorm writes the kernel back already divided by its first sigma estimate, so the
    stored kernel is ``kernel_init(...) / sigma`` (norm ~1), not the raw draw; the layer's
    output does not depend on the kernel's scale, only the step size relative to it does.
    """

    features: int
    method: str = "strided"
    spectral_norm: bool = False
    kernel_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _check_choice("downsampling method", self.method, DOWNSAMPLE)
        strided = self.method == "strided"
        conv = common_conv.Conv(self.features, (4, 4) if strided else (3, 3),
                       strides=(2, 2) if strided else (1, 1),
                       padding=((1, 1), (1, 1)) if strided else "SAME", use_bias=False,
                       kernel_init=self.kernel_init, dtype=self.dtype, name="conv")
        x = x.astype(self.dtype)
        x = nn.SpectralNorm(conv)(x, update_stats=train) if self.spectral_norm else conv(x)
        return x if strided else nn.avg_pool(x, (2, 2), strides=(2, 2))


class PixelNorm(nn.Module):
    """ProGAN's pixelwise feature normalisation (Karras et al. 2018): each pixel's feature
    vector is scaled to unit mean square over the channels. No parameters."""

    epsilon: float = 1e-8

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        mean_square = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        return (x * jax.lax.rsqrt(mean_square + self.epsilon)).astype(x.dtype)


class Identity(nn.Module):
    """The "none" normalisation."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def bn_scale_init(key, shape, dtype=jnp.float32):
    """Batch-norm scale ~ N(1, 0.02), as in the reference DCGAN."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def make_norm(kind: str, *, train: bool, axis_name: str | None,
              dtype: jnp.dtype = jnp.float32) -> Callable[..., nn.Module]:
    """A normalisation constructor for NHWC maps: ``make_norm(...)(name="bn")(x)``.

    - "batch": batch statistics (averaged over the `axis_name` device axis) in training,
      running averages in evaluation; PyTorch's momentum 0.1 and eps 1e-5; scale ~ N(1, 0.02).
    - "instance": each example and channel over H, W (Ulyanov et al. 2016); learned affine.
    - "pixel": `PixelNorm` (ProGAN).
    - "layer": each example over H, W, C with a per-channel affine; independent of the other
      examples, so usable in WGAN-GP critics whose gradient penalty is per example.
    - "none": identity.
    """
    _check_choice("normalisation", kind, NORMS)
    if kind == "batch":
        return functools.partial(BatchNorm, use_running_average=not train, momentum=0.9,
                                 epsilon=1e-5, scale_init=bn_scale_init, axis_name=axis_name,
                                 dtype=dtype)
    if kind == "instance":
        return functools.partial(nn.InstanceNorm, epsilon=1e-5, dtype=dtype)
    if kind == "layer":
        return functools.partial(nn.LayerNorm, epsilon=1e-5, reduction_axes=(-3, -2, -1),
                                 feature_axes=-1, dtype=dtype)
    return PixelNorm if kind == "pixel" else Identity
