"""DCGAN generator and discriminator (Radford, Metz and Chintala, 2015), with switchable parts.

The generator projects z through a linear layer (the paper's "project and reshape", equal to a
transposed convolution on a 1x1 input) to a small square map, then doubles the resolution with
upsampling + normalisation + activation, ending in tanh. The discriminator mirrors it with
downsampling + normalisation (not on the first layer) + activation, no fully connected hidden
layer, ending in one logit. Weights start from N(0, 0.02).

The defaults are the paper's: transposed convolutions, batch norm, ReLU in G; strided
convolutions, batch norm, LeakyReLU(0.2) in D. Each part can be switched (see
`gans_jax.layers`: upsampling and downsampling methods, normalisations, spectral norm;
`common_jax.activations`), which is how the seeds' GAN advice is tried and measured.

Image sizes are ``base * 2**n`` with ``base`` in 4..8 (28 = 7*4, 32 = 4*8, 64 = 4*16); gray or
RGB. For 64x64 RGB with width 64 the parameter counts equal the PyTorch reference DCGAN.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax.activations import Activation
from common_jax.errors import UserError
from gans_jax.layers import Downsample, Upsample, make_norm

conv_init = nn.initializers.normal(stddev=0.02)


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
    upsample: str = "transpose4"  # see gans_jax.layers.UPSAMPLE
    upsample_impl: str = "auto"  # transpose4's formulation; see conv_transpose_4x4
    norm: str = "batch"
    activation: str = "relu"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
        base, n = geometry(self.image_size)
        norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        def act(x, name):  # one module per layer: PReLU learns a slope per layer
            return Activation(self.activation, name=f"{name}_act")(x)

        features = self.width * 2 ** (n - 1)
        x = nn.Dense(base * base * features, use_bias=False, kernel_init=conv_init,
                     dtype=self.dtype, name="project")(z)
        x = x.reshape(z.shape[0], base, base, features)  # [B, base, base, width * 2**(n-1)]
        x = act(norm(name="project_bn")(x), "project")
        for i in range(n - 1):
            features //= 2
            x = self._upsample(features, f"up{i}")(x)  # resolution doubles
            x = act(norm(name=f"up{i}_bn")(x), f"up{i}")
        x = self._upsample(self.channels, "to_image")(x)
        return jnp.tanh(x.astype(jnp.float32))

    def _upsample(self, features: int, name: str) -> nn.Module:
        return Upsample(features, method=self.upsample, impl=self.upsample_impl,
                        kernel_init=conv_init, dtype=self.dtype, name=name)


class Discriminator(nn.Module):
    """images [B, H, W, C] in [-1, 1] -> logits [B] (real > 0)."""

    image_size: int
    width: int = 64  # ndf: channels of the first layer; doubles with each downsampling
    axis_name: str | None = None
    downsample: str = "strided"  # see gans_jax.layers.DOWNSAMPLE
    norm: str = "batch"
    spectral_norm: bool = False  # on every convolution and the output layer (Miyato et al.)
    activation: str = "leaky_relu"
    slope: float = 0.2  # LeakyReLU's negative slope (the paper's 0.2)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        _, n = geometry(self.image_size)
        norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        x = x.astype(self.dtype)
        for i in range(n):
            x = Downsample(self.width * 2**i, method=self.downsample,
                           spectral_norm=self.spectral_norm, kernel_init=conv_init,
                           dtype=self.dtype, name=f"down{i}")(x, train=train)  # halves
            if i > 0:  # the paper leaves the first layer unnormalised
                x = norm(name=f"down{i}_bn")(x)
            x = Activation(self.activation, slope=self.slope, name=f"down{i}_act")(x)
        x = x.reshape(x.shape[0], -1)  # [B, base * base * width * 2**(n-1)]
        logit = nn.Dense(1, use_bias=False, kernel_init=conv_init, dtype=self.dtype,
                         name="logit")
        if self.spectral_norm:
            logit = nn.SpectralNorm(logit, name="logit_sn")(x, update_stats=train)
        else:
            logit = logit(x)
        return logit[:, 0].astype(jnp.float32)
