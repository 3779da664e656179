"""DCGAN generator and discriminator (Radford, Metz and Chintala, 2015).

The generator projects z through a linear layer (the paper's "project and reshape", equal to a
transposed convolution on a 1x1 input) to a small square map, then doubles the resolution with
transposed convolutions + batch norm + ReLU, ending in tanh. The discriminator mirrors it with
strided convolutions + batch norm (not on the first layer) + LeakyReLU(0.2), no pooling and no
fully connected hidden layer, ending in one logit. Weights start from N(0, 0.02).

Image sizes are ``base * 2**n`` with ``base`` in 4..8 (28 = 7*4, 32 = 4*8, 64 = 4*16); gray or
RGB. For 64x64 RGB with width 64 the parameter counts equal the PyTorch reference DCGAN.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax.errors import UserError
from gans_jax.layers import ConvTranspose4x4

conv_init = nn.initializers.normal(stddev=0.02)


def bn_scale_init(key, shape, dtype=jnp.float32):
    """Batch-norm scale ~ N(1, 0.02), as in the reference implementation."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def geometry(image_size: int) -> tuple[int, int]:
    """Returns (base, n): the generator starts at base x base and doubles n times."""
    n = 0
    while image_size % 2 ** (n + 1) == 0 and image_size // 2 ** (n + 1) >= 4:
        n += 1
    base = image_size // 2**n
    if n < 2 or base > 8:
        raise UserError(
            f"image_size {image_size} cannot be made by the DCGAN: it must be base * 2**n "
            "with base 4..8 and n >= 2 (e.g. 28, 32, 64, 128); set --config.model.image_size "
            "to such a size (the data is resized to it)"
        )
    return base, n


class Generator(nn.Module):
    """z [B, z_dim] -> images [B, image_size, image_size, channels] in [-1, 1]."""

    image_size: int
    channels: int
    width: int = 64  # ngf: channels of the last hidden layer; doubles towards the input
    axis_name: str | None = None  # batch-norm statistics are averaged over this device axis
    upsample_impl: str = "auto"  # see gans_jax.layers.conv_transpose_4x4
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
        base, n = geometry(self.image_size)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
            scale_init=bn_scale_init, axis_name=self.axis_name, dtype=self.dtype,
        )
        features = self.width * 2 ** (n - 1)
        x = nn.Dense(base * base * features, use_bias=False, kernel_init=conv_init,
                     dtype=self.dtype, name="project")(z)
        x = x.reshape(z.shape[0], base, base, features)  # [B, base, base, width * 2**(n-1)]
        x = nn.relu(norm(name="project_bn")(x))
        for i in range(n - 1):
            features //= 2
            x = ConvTranspose4x4(features, impl=self.upsample_impl, kernel_init=conv_init,
                                 dtype=self.dtype, name=f"up{i}")(x)  # resolution doubles
            x = nn.relu(norm(name=f"up{i}_bn")(x))
        x = ConvTranspose4x4(self.channels, impl=self.upsample_impl, kernel_init=conv_init,
                             dtype=self.dtype, name="to_image")(x)
        return jnp.tanh(x.astype(jnp.float32))


class Discriminator(nn.Module):
    """images [B, H, W, C] in [-1, 1] -> logits [B] (real > 0)."""

    image_size: int
    width: int = 64  # ndf: channels of the first layer; doubles with each downsampling
    axis_name: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _, n = geometry(self.image_size)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
            scale_init=bn_scale_init, axis_name=self.axis_name, dtype=self.dtype,
        )
        x = x.astype(self.dtype)
        for i in range(n):
            x = nn.Conv(self.width * 2**i, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                        use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                        name=f"down{i}")(x)  # resolution halves
            if i > 0:  # the paper leaves the first layer unnormalised
                x = norm(name=f"down{i}_bn")(x)
            x = nn.leaky_relu(x, 0.2)
        x = x.reshape(x.shape[0], -1)  # [B, base * base * width * 2**(n-1)]
        logit = nn.Dense(1, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                         name="logit")(x)
        return logit[:, 0].astype(jnp.float32)


