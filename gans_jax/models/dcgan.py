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

`architecture` (`ARCHITECTURES`) picks the layer stack; "dcgan" (the default above) keeps every
existing config's parameter tree. "sngan_dcgan" is the 32x32 "standard CNN" of the spectral
normalisation paper (Miyato et al. 2018, Table 3), the network PyTorch-StudioGAN trains as its
CIFAR-10 DCGAN (`src/models/deep_conv.py`), with ``width`` 64:
  G: z -> dense (with bias, no norm) -> 4x4x512 -> [transposed conv k4 s2 -> norm -> act] x 3
     (256, 128, 64 channels) -> 3x3 conv (with bias) -> tanh;
  D: [3x3 s1 conv -> norm -> act -> 4x4 s2 conv -> norm -> act] x 3 (64, 128, 256 channels)
     -> 3x3 s1 conv to 512 -> norm -> act -> sum over H, W -> dense to 1 (with bias).
Unlike the paper DCGAN, every D layer is normalised (the first too, as StudioGAN does), and a
layer has a bias unless a normalisation follows it (which would cancel it). Spectral norm
(``spectral_norm``) wraps every D convolution and the dense layer. docs/dcgan.md says where each
choice was checked and how this differs from the paper and from StudioGAN.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax.activations import Activation
from common_jax.conv import Conv
from common_jax.errors import UserError
from gans_jax.layers import Downsample, Upsample, make_norm

conv_init = nn.initializers.normal(stddev=0.02)

# Layer stacks by name (`model.architecture`): the paper DCGAN, and the spectral normalisation
# paper's 32x32 DCGAN ("standard CNN").
ARCHITECTURES = ("dcgan", "sngan_dcgan")


def check_architecture(architecture: str) -> None:
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown model.architecture '{architecture}'; set "
                        f"--config.model.architecture to one of {', '.join(ARCHITECTURES)}")


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
    architecture: str = "dcgan"  # see ARCHITECTURES

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
        check_architecture(self.architecture)
        if self.architecture == "sngan_dcgan":
            return self._sngan_dcgan(z, train=train)
        base, n = geometry(self.image_size)
        norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        act = self._act
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

    def _sngan_dcgan(self, z: jax.Array, *, train: bool) -> jax.Array:
        base, n = geometry(self.image_size)
        norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        features = self.width * 2**n  # 512 at width 64, 32x32
        # The table's "dense": no norm or activation before the first transposed conv.
        x = nn.Dense(base * base * features, kernel_init=conv_init, dtype=self.dtype,
                     name="project")(z)
        x = x.reshape(z.shape[0], base, base, features)  # [B, base, base, width * 2**n]
        for i in range(n):
            features //= 2
            x = self._upsample(features, f"up{i}")(x)  # resolution doubles
            x = self._act(norm(name=f"up{i}_bn")(x), f"up{i}")
        x = Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
                    dtype=self.dtype, name="to_image")(x)  # [B, size, size, channels]
        return jnp.tanh(x.astype(jnp.float32))

    def _act(self, x: jax.Array, name: str) -> jax.Array:
        # One module per layer: PReLU learns a slope per layer.
        return Activation(self.activation, name=f"{name}_act")(x)

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
    architecture: str = "dcgan"  # see ARCHITECTURES

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        check_architecture(self.architecture)
        if self.architecture == "sngan_dcgan":
            return self._sngan_dcgan(x, train=train)
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

    def _sngan_dcgan(self, x: jax.Array, *, train: bool) -> jax.Array:
        _, n = geometry(self.image_size)
        norm = make_norm(self.norm, train=train, axis_name=self.axis_name, dtype=self.dtype)
        # A normalisation's mean subtraction cancels a bias before it: biases only without one.
        use_bias = self.norm == "none"

        def layer(x, features, kernel, stride, name):  # conv -> norm -> activation
            conv = Conv(features, (kernel, kernel), strides=(stride, stride),
                           padding=((1, 1), (1, 1)), use_bias=use_bias, kernel_init=conv_init,
                           dtype=self.dtype, name=name)
            x = self._apply(conv, x, train=train)
            x = norm(name=f"{name}_bn")(x)
            return Activation(self.activation, slope=self.slope, name=f"{name}_act")(x)

        x = x.astype(self.dtype)
        for i in range(n):
            features = self.width * 2**i
            x = layer(x, features, 3, 1, f"conv{i}a")
            x = layer(x, features, 4, 2, f"conv{i}b")  # halves H and W
        x = layer(x, self.width * 2**n, 3, 1, f"conv{n}")  # [B, base, base, width * 2**n]
        x = x.sum(axis=(1, 2))  # global sum pooling (StudioGAN's head)
        logit = nn.Dense(1, kernel_init=conv_init, dtype=self.dtype, name="logit")
        return self._apply(logit, x, train=train)[:, 0].astype(jnp.float32)

    def _apply(self, layer: nn.Module, x: jax.Array, *, train: bool) -> jax.Array:
        """The layer, divided by its kernel's largest singular value with spectral norm."""
        if not self.spectral_norm:
            return layer(x)
        return nn.SpectralNorm(layer, name=f"{layer.name}_sn")(x, update_stats=train)
