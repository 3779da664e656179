"""A convolutional autoencoder (Flax Linen, NHWC): strided-conv encoder, upsampling decoder.

Images in [-1, 1], float [B, S, S, C] -> reconstructions of the same shape, squashed into
[-1, 1] by a final tanh. The encoder has `depth` stages; each halves H and W with a strided
4x4 conv and then applies `convs_per_stage - 1` 3x3 convs, every conv followed by the chosen
normalisation and activation. Stage i has ``widths[i]`` channels. The bottleneck is either

- "vector": the last feature map flattened and mapped by a dense layer to `latent_size`
  values (the decoder maps them back with a dense layer), or
- "map": a 1x1 conv to ``latent_size / (s*s)`` channels on the s x s map the encoder ends
  with (s = image_size / 2**depth), so `latent_size` must be a multiple of s*s.

The decoder mirrors the encoder: each stage doubles H and W with `gans_jax.layers.Upsample`
(a transposed 4x4 conv by default, or resize + conv, or sub-pixel conv), then 3x3 convs.
Batch norm syncs its statistics over `axis_name` (the device axis) in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax.activations import Activation
from common_jax.batch_norm import BatchNorm
from common_jax.conv import Conv
from common_jax.errors import UserError
from gans_jax.layers import UPSAMPLE
from gans_jax.layers import Upsample as GanUpsample

LATENT_KINDS = ("vector", "map")
NORMS = ("none", "batch", "layer", "group")
GROUPS = 8  # group norm: groups per layer (fewer when a layer has fewer channels)


def latent_grid(image_size: int, depth: int) -> int:
    """The side of the encoder's last feature map; refuses sizes the stages cannot halve."""
    if depth < 1:
        raise UserError(f"model.depth must be at least 1, got {depth}; set --config.model.depth")
    if image_size % 2**depth:
        raise UserError(
            f"image_size {image_size} cannot be halved {depth} times; set --config.model."
            f"image_size to a multiple of {2**depth} or lower --config.model.depth")
    return image_size // 2**depth


def latent_channels(latent_kind: str, latent_size: int, image_size: int, depth: int) -> int:
    """Channels of a "map" latent (0 for "vector"); refuses sizes the map cannot hold."""
    if latent_kind not in LATENT_KINDS:
        raise UserError(f"unknown latent_kind '{latent_kind}'; set --config.model.latent_kind "
                        f"to one of {', '.join(LATENT_KINDS)}")
    if latent_size < 1:
        raise UserError(f"model.latent_size must be at least 1, got {latent_size}")
    side = latent_grid(image_size, depth)
    if latent_kind == "vector":
        return 0
    cells = side * side
    if latent_size % cells:
        low = max(cells, latent_size // cells * cells)
        raise UserError(
            f"a map latent of {latent_size} values does not fit the {side}x{side} map the "
            f"encoder ends with; set --config.model.latent_size to a multiple of {cells} "
            f"(e.g. {low} or {low + cells}), or use --config.model.latent_kind=vector")
    return latent_size // cells


class Norm(nn.Module):
    """The normalisation `kind` names; batch norm averages over `axis_name` in training."""

    kind: str
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.kind == "batch":
            return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             axis_name=self.axis_name)(x)
        if self.kind == "layer":
            return nn.LayerNorm(epsilon=1e-5, reduction_axes=(-3, -2, -1))(x)
        if self.kind == "group":
            channels = x.shape[-1]
            groups = max(g for g in range(1, min(GROUPS, channels) + 1) if channels % g == 0)
            return nn.GroupNorm(num_groups=groups, epsilon=1e-5)(x)
        return x


class ConvBlock(nn.Module):
    """conv -> norm -> activation (no bias when a norm follows: it would be cancelled)."""

    features: int
    kernel: int = 3
    stride: int = 1
    norm: str = "none"
    activation: str = "gelu"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        pad = (self.kernel - self.stride + 1) // 2  # 3x3 s1 -> 1, 4x4 s2 -> 1
        x = Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                    padding=((pad, pad), (pad, pad)), use_bias=self.norm == "none")(x)
        x = Norm(self.norm, self.axis_name)(x, train=train)
        return Activation(self.activation)(x)


class Encoder(nn.Module):
    """Images -> latent: [B, latent_size] ("vector") or [B, s, s, channels] ("map")."""

    widths: Sequence[int]
    latent_kind: str
    latent_size: int
    convs_per_stage: int = 2
    norm: str = "none"
    activation: str = "gelu"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        block = dict(norm=self.norm, activation=self.activation, axis_name=self.axis_name)
        x = ConvBlock(self.widths[0], **block)(x, train=train)  # full-resolution features first
        for width in self.widths:
            x = ConvBlock(width, kernel=4, stride=2, **block)(x, train=train)
            for _ in range(self.convs_per_stage - 1):
                x = ConvBlock(width, **block)(x, train=train)
        if self.latent_kind == "vector":
            return nn.Dense(self.latent_size, name="to_latent")(x.reshape(x.shape[0], -1))
        channels = self.latent_size // (x.shape[1] * x.shape[2])
        return Conv(channels, (1, 1), name="to_latent")(x)


class Decoder(nn.Module):
    """Latent -> images in [-1, 1] (tanh)."""

    widths: Sequence[int]  # the encoder's, in encoder order
    latent_kind: str
    side: int  # the encoder's last map side
    channels: int = 3
    convs_per_stage: int = 2
    norm: str = "none"
    activation: str = "gelu"
    upsample: str = "transpose4"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
        block = dict(norm=self.norm, activation=self.activation, axis_name=self.axis_name)
        top = self.widths[-1]
        if self.latent_kind == "vector":
            x = nn.Dense(self.side * self.side * top, name="from_latent")(z)
            x = x.reshape(z.shape[0], self.side, self.side, top)
        else:
            x = Conv(top, (1, 1), name="from_latent")(z)
        x = Activation(self.activation)(x)
        for width in reversed(self.widths):
            for _ in range(self.convs_per_stage - 1):
                x = ConvBlock(width, **block)(x, train=train)
            x = Upsample(width, self.upsample)(x)
            x = Norm(self.norm, self.axis_name)(x, train=train)
            x = Activation(self.activation)(x)
        x = Conv(self.channels, (3, 3), padding=1, name="to_pixels")(x)
        return jnp.tanh(x)


def Upsample(features: int, method: str) -> nn.Module:  # noqa: N802 - a module factory
    """`gans_jax.layers.Upsample` with the default Flax conv initialiser (the GANs' N(0, 0.02)
    suits their normalised nets; an autoencoder without norm trains faster with LeCun's)."""
    return GanUpsample(features, method=method,
                       kernel_init=nn.initializers.lecun_normal())


class ConvAutoencoder(nn.Module):
    """Encoder + decoder; `encode` gives the latent alone (features for a linear probe)."""

    image_size: int = 32
    channels: int = 3
    widths: Sequence[int] = (64, 128, 256)
    latent_kind: str = "vector"
    latent_size: int = 256
    convs_per_stage: int = 2
    norm: str = "none"
    activation: str = "gelu"
    upsample: str = "transpose4"
    axis_name: str | None = None

    def setup(self):
        depth = len(self.widths)
        latent_channels(self.latent_kind, self.latent_size, self.image_size, depth)
        if self.norm not in NORMS:
            raise UserError(f"unknown norm '{self.norm}'; set --config.model.norm to one of "
                            f"{', '.join(NORMS)}")
        if self.upsample not in UPSAMPLE:
            raise UserError(f"unknown upsample '{self.upsample}'; set --config.model.upsample "
                            f"to one of {', '.join(UPSAMPLE)}")
        common = dict(latent_kind=self.latent_kind, convs_per_stage=self.convs_per_stage,
                      norm=self.norm, activation=self.activation, axis_name=self.axis_name)
        self.encoder = Encoder(self.widths, latent_size=self.latent_size, **common)
        self.decoder = Decoder(self.widths, side=latent_grid(self.image_size, depth),
                               channels=self.channels, upsample=self.upsample, **common)

    def encode(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.shape[1:] != (self.image_size, self.image_size, self.channels):
            raise UserError(
                f"the autoencoder was built for {self.image_size}x{self.image_size}x"
                f"{self.channels} images but got {'x'.join(map(str, x.shape[1:]))}; resize "
                "them or set --config.model.image_size / channels to match")
        return self.encoder(x, train=train)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.decoder(self.encode(x, train=train), train=train)
