"""CycleGAN networks (Zhu, Park, Isola and Efros, 2017): the ResNet generator and the PatchGAN
discriminator of the reference implementation, in Flax Linen (NHWC).

Generator, for ``width`` = ngf and ``num_blocks`` = n (the paper's notation):
    c7s1-ngf, d(2 ngf), d(4 ngf), n x R(4 ngf), u(2 ngf), u(ngf), c7s1-C, tanh
c7s1-k: reflection pad 3, 7x7 conv, norm, ReLU; dk: 3x3 conv stride 2 (zero padding 1), norm,
ReLU; R: two reflection-padded 3x3 convs with a norm between (ReLU after the first) and a skip
connection; uk: stride-2 upsampling (`gans_jax.layers.Upsample`, the reference's transposed
convolution k3 s2 p1 output_padding 1 is "transpose3"), norm, ReLU. The last c7s1 has no norm
and ends in tanh.

Discriminator (the 70x70 PatchGAN for ``num_layers`` = 3): C64 (no norm), C128, C256 with stride
2, C512 with stride 1, then a 1-channel stride-1 conv; every conv k4 padding 1, LeakyReLU 0.2.
It returns a grid of logits, one per overlapping patch ([B, 30, 30, 1] at 256 px).

The norm is the reference's instance norm: each image and channel normalised over H, W with its
own mean and biased variance (eps 1e-5), no learned scale or shift and no running averages, so
an image is transformed alike in training and inference whatever else is in its batch. Every
weight starts from N(0, 0.02), biases from 0.

One difference from the reference: a conv followed by a norm has no bias here. The reference
gives those convs a bias, but the norm subtracts the per-channel mean and cancels it exactly, so
its gradient is zero up to rounding; Adam divides by the gradient's running RMS and turns that
rounding noise into steps of up to the learning rate, a random walk of weights that change
nothing (and that differs with the device count). The networks compute the same functions with
5,248 (generator: 64 + 128 + 256 + 9 x 2 x 256 + 128 + 64) and 896 (PatchGAN: 128 + 256 + 512)
fewer parameters: 11,372,931 instead of 11,378,179 and 2,763,841 instead of 2,764,737 at
ngf = ndf = 64 on RGB. With ``norm="none"`` every conv has its bias.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax.conv import Conv
from common_jax.errors import UserError
from gans_jax.layers import Upsample

conv_init = nn.initializers.normal(stddev=0.02)
# "instance": the reference (no affine, eps 1e-5); "instance_affine": with a learned per-channel
# scale and shift; "none": no normalisation.
NORMS = ("instance", "instance_affine", "none")
EPSILON = 1e-5


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    """[B, H, W, C] -> [B, H + 2 pad, W + 2 pad, C], mirrored without repeating the edge
    (PyTorch's ReflectionPad2d)."""
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def conv_bias(norm: str) -> bool:
    """Whether a conv followed by the norm `norm` has a bias (only without a norm: a norm's mean
    subtraction would cancel it)."""
    return norm == "none"


def make_norm(kind: str, *, dtype: jnp.dtype, name: str) -> nn.Module:
    """The normalisation `kind` names (one of `NORMS`), as a module called `name`."""
    if kind not in NORMS:
        raise UserError(f"unknown normalisation '{kind}'; set --config.model.g_norm / d_norm to "
                        f"one of {', '.join(NORMS)}")
    if kind == "none":
        return _Identity(name=name)
    affine = kind == "instance_affine"
    return nn.InstanceNorm(epsilon=EPSILON, use_scale=affine, use_bias=affine, dtype=dtype,
                           name=name)


class _Identity(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def check_generator_size(image_size: int) -> None:
    """Two stride-2 downsamplings and reflection padding need a multiple of 4, at least 8."""
    if image_size % 4 or image_size < 8:
        raise UserError(f"image size {image_size} does not fit the CycleGAN generator (two "
                        "stride-2 steps down and up); set --config.model.image_size to a "
                        "multiple of 4, at least 8 (e.g. 64, 128, 256)")


def patch_grid_size(image_size: int, num_layers: int) -> int:
    """The side of the PatchGAN's logit grid: halved `num_layers` times, then -1 twice."""
    return image_size // 2**num_layers - 2


def check_discriminator_size(image_size: int, num_layers: int) -> None:
    if num_layers < 1 or patch_grid_size(image_size, num_layers) < 1:
        fit = max((n for n in range(1, 9) if patch_grid_size(image_size, n) >= 1), default=0)
        fix = (f"set --config.model.d_layers to {fit} or less" if fit else
               "set --config.model.image_size to 16 or more")
        raise UserError(f"the PatchGAN with {num_layers} stride-2 layers leaves no patch of a "
                        f"{image_size}-pixel image; {fix}")


class ResnetBlock(nn.Module):
    """x + (pad, conv3, norm, ReLU, pad, conv3, norm)(x); channels unchanged."""

    norm: str = "instance"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        conv = functools.partial(Conv, features, (3, 3), padding="VALID",
                                 use_bias=conv_bias(self.norm), kernel_init=conv_init,
                                 dtype=self.dtype)
        y = conv(name="conv0")(reflect_pad(x, 1))  # [B, H, W, C]
        y = nn.relu(make_norm(self.norm, dtype=self.dtype, name="norm0")(y))
        y = conv(name="conv1")(reflect_pad(y, 1))  # [B, H, W, C]
        y = make_norm(self.norm, dtype=self.dtype, name="norm1")(y)
        return x + y


class UpsampleBias(nn.Module):
    """`gans_jax.layers.Upsample` (doubles H and W), with a bias when `use_bias`."""

    features: int
    method: str = "transpose3"
    impl: str = "auto"
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = Upsample(self.features, method=self.method, impl=self.impl,
                     transpose3_impl=self.impl, kernel_init=conv_init, dtype=self.dtype,
                     name="conv")(x)  # [B, 2H, 2W, features]
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return y + bias.astype(y.dtype)


class ResnetGenerator(nn.Module):
    """images [B, S, S, C_in] in [-1, 1] -> images [B, S, S, channels] in [-1, 1]."""

    channels: int = 3
    width: int = 64  # ngf
    num_blocks: int = 9  # the paper: 6 at 128 px and below, 9 at 256 px
    upsample: str = "transpose3"  # gans_jax.layers.UPSAMPLE
    # the transposed convs' form: "auto" as gans_jax.layers.resolve_impl picks it
    upsample_impl: str = "auto"
    norm: str = "instance"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_generator_size(x.shape[1])
        w = self.width

        def norm_relu(y, name):
            return nn.relu(make_norm(self.norm, dtype=self.dtype, name=name)(y))

        x = x.astype(self.dtype)
        bias = conv_bias(self.norm)
        x = Conv(w, (7, 7), padding="VALID", use_bias=bias, kernel_init=conv_init,
                 dtype=self.dtype, name="c7s1")(reflect_pad(x, 3))  # [B, S, S, w]
        x = norm_relu(x, "c7s1_norm")
        for i, features in enumerate((2 * w, 4 * w)):
            x = Conv(features, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                     use_bias=bias, kernel_init=conv_init, dtype=self.dtype,
                     name=f"down{i}")(x)  # [B, S / 2^(i+1), S / 2^(i+1), features]
            x = norm_relu(x, f"down{i}_norm")
        for i in range(self.num_blocks):
            x = ResnetBlock(self.norm, self.dtype, name=f"block{i}")(x)  # [B, S/4, S/4, 4w]
        for i, features in enumerate((2 * w, w)):
            x = UpsampleBias(features, method=self.upsample, impl=self.upsample_impl,
                             use_bias=bias, dtype=self.dtype,
                             name=f"up{i}")(x)  # [B, S / 2^(1-i), S / 2^(1-i), features]
            x = norm_relu(x, f"up{i}_norm")
        x = Conv(self.channels, (7, 7), padding="VALID", kernel_init=conv_init,
                 dtype=self.dtype, name="to_image")(reflect_pad(x, 3))  # [B, S, S, channels]
        return jnp.tanh(x.astype(jnp.float32))


class PatchDiscriminator(nn.Module):
    """images [B, S, S, C] -> logits [B, S/2^L - 2, S/2^L - 2, 1] (real > 0), L = num_layers."""

    width: int = 64  # ndf
    num_layers: int = 3  # stride-2 convs; 3 gives the 70x70 PatchGAN
    norm: str = "instance"
    slope: float = 0.2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        check_discriminator_size(x.shape[1], self.num_layers)
        conv = functools.partial(Conv, kernel_size=(4, 4), padding=((1, 1), (1, 1)),
                                 kernel_init=conv_init, dtype=self.dtype)
        x = x.astype(self.dtype)
        x = nn.leaky_relu(conv(self.width, strides=(2, 2), name="conv0")(x), self.slope)
        for n in range(1, self.num_layers + 1):
            last = n == self.num_layers  # the stride-1 layer before the logits
            features = self.width * min(2**n, 8)
            x = conv(features, strides=(1, 1) if last else (2, 2),
                     use_bias=conv_bias(self.norm), name=f"conv{n}")(x)
            x = make_norm(self.norm, dtype=self.dtype, name=f"norm{n}")(x)
            x = nn.leaky_relu(x, self.slope)  # [B, h, w, features]
        x = conv(1, strides=(1, 1), name="logits")(x)  # [B, h - 1, w - 1, 1]
        return x.astype(jnp.float32)
