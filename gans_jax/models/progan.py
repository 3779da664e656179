"""Progressive GAN networks (Karras, Aila, Laine and Lehtinen, 2017): a generator and a
discriminator that grow from 4x4 to a final resolution ``4 * 2**k``.

Both networks hold the parameters of every resolution from the start, so the state's tree is
the same in every stage of training and a checkpoint restores in any of them. A call takes the
resolution to run at (static: it fixes the shapes) and the fade-in weight `alpha` (traced: it
changes every step without recompiling):

- G at resolution R: the trunk up to R/2, then ``(1 - alpha) * upsample(toRGB_{R/2}(h)) +
  alpha * toRGB_R(block_R(h))``: at alpha = 0 exactly the R/2 network, nearest-upsampled;
  at alpha = 1 only the new block counts.
- D at resolution R: ``(1 - alpha) * fromRGB_{R/2}(avgpool(x)) + alpha * block_R(fromRGB_R(x))``
  feeds the trunk from R/2 down: at alpha = 0 exactly the R/2 network on the downsampled image.

The paper's parts: pixel norm after every conv of G (and on z); equalized learning rate (weights
stored N(0, 1) and scaled at run time by He's constant, `EqualizedConv`, `EqualizedDense`);
LeakyReLU 0.2; nearest-neighbour upsampling in G and 2x2 average pooling in D; a minibatch
standard-deviation channel before D's last block; linear toRGB and a linear last layer of D.
Channels per resolution are ``min(max_channels, fmap_base * 2 // R)`` (`channels_at`): the
paper's fmap_base 8192 and max_channels 512 give 512 up to 32x32, then 256, 128, 64, 32, 16.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax import conv as common_conv
from common_jax.errors import UserError

SLOPE = 0.2  # LeakyReLU's negative slope everywhere
HE_GAIN = math.sqrt(2.0)
_DIMS = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------- geometry


def resolutions(final: int) -> list[int]:
    """[4, 8, ..., final] for a final resolution 4 * 2**k; a UserError otherwise."""
    if not isinstance(final, int) or final < 4 or final & (final - 1):
        raise UserError(f"model.image_size {final} is not a ProGAN resolution: it must be "
                        "4 * 2**k (4, 8, 16, 32, 64, 128, 256, 512, 1024); set "
                        "--config.model.image_size to one of them")
    return [4 * 2**i for i in range(int(math.log2(final)) - 1)]


def channels_at(resolution: int, fmap_base: int, max_channels: int) -> int:
    """Feature maps of the block at `resolution` (the paper's nf(stage) with decay 1)."""
    return max(1, min(max_channels, fmap_base * 2 // resolution))


def upsample(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, 2H, 2W, C], nearest neighbour."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def downsample(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, H/2, W/2, C], the mean of each 2x2 block."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def lerp(old: jax.Array, new: jax.Array, alpha: jax.Array) -> jax.Array:
    """(1 - alpha) * old + alpha * new, written so that alpha = 0 gives `old` and alpha = 1
    gives `new` exactly (old + alpha * (new - old) would round at alpha = 1)."""
    alpha = jnp.asarray(alpha, old.dtype)
    return (1.0 - alpha) * old + alpha * new


def fade_reals(images: jax.Array, alpha: jax.Array) -> jax.Array:
    """Real images at resolution R as D sees them while R fades in: the blend of the images
    with their R/2 version (average-pooled, then nearest-upsampled) by the same alpha as G's."""
    return lerp(upsample(downsample(images)), images, alpha)


def pixel_norm(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Each pixel's feature vector scaled to unit mean square (the paper's PixelNorm)."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def leaky(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, SLOPE)


def minibatch_stddev(x: jax.Array, group: int) -> jax.Array:
    """Appends one channel: the standard deviation of each feature over a group of examples,
    averaged over features and pixels, shared by the group's members.

    Groups are `group` consecutive examples (fewer if the batch is smaller), so a data-parallel
    step whose per-device batch is a multiple of `group` gives what one device gives.
    """
    b, h, w, c = x.shape
    g = min(group, b)
    if b % g:
        raise UserError(f"a batch of {b} examples per device cannot form minibatch-stddev "
                        f"groups of {g}; make every per-device batch a multiple of "
                        f"model.mbstd_group={group} (or lower it)")
    y = x.astype(jnp.float32).reshape(b // g, g, h, w, c)
    std = jnp.sqrt(jnp.var(y, axis=1) + 1e-8)  # [b/g, h, w, c]
    stat = jnp.mean(std, axis=(1, 2, 3))  # [b/g]
    stat = jnp.broadcast_to(jnp.repeat(stat, g)[:, None, None, None], (b, h, w, 1))
    return jnp.concatenate([x, stat.astype(x.dtype)], axis=-1)


# ----------------------------------------------------------------------------- layers


class EqualizedConv(nn.Module):
    """A stride-1 convolution whose kernel is stored N(0, 1) and scaled at run time by
    gain / sqrt(fan_in), so Adam's step is the same relative size for every layer."""

    features: int
    kernel_size: int = 3
    gain: float = HE_GAIN
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, fan_in = self.kernel_size, self.kernel_size**2 * x.shape[-1]
        kernel = self.param("kernel", nn.initializers.normal(1.0),
                            (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        scale = self.gain / math.sqrt(fan_in)
        y = common_conv.conv_general_dilated(x.astype(self.dtype),
                                             (kernel * scale).astype(self.dtype), (1, 1), "SAME",
                                             dimension_numbers=_DIMS)
        return y + bias.astype(self.dtype)


class EqualizedDense(nn.Module):
    """A dense layer with the equalized learning rate of `EqualizedConv`."""

    features: int
    gain: float = HE_GAIN
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        scale = self.gain / math.sqrt(x.shape[-1])
        return x.astype(self.dtype) @ (kernel * scale).astype(self.dtype) + bias.astype(self.dtype)


# ----------------------------------------------------------------------------- networks


class Generator(nn.Module):
    """z [B, z_dim] -> images [B, R, R, channels] at the called resolution R (linear output,
    roughly in [-1, 1]; clip for display)."""

    image_size: int  # the final resolution, 4 * 2**k
    channels: int = 3
    fmap_base: int = 8192
    max_channels: int = 512
    dtype: jnp.dtype = jnp.float32

    def nf(self, resolution: int) -> int:
        return channels_at(resolution, self.fmap_base, self.max_channels)

    def conv(self, features: int, name: str, kernel_size: int = 3, gain: float = HE_GAIN):
        return EqualizedConv(features, kernel_size, gain, self.dtype, name=name)

    def to_rgb(self, resolution: int, h: jax.Array) -> jax.Array:
        return self.conv(self.channels, f"to_rgb{resolution}", 1, gain=1.0)(h)

    def block(self, resolution: int, h: jax.Array) -> jax.Array:
        """The features at `resolution` from those at half of it (z at 4x4)."""
        nf = self.nf(resolution)
        if resolution == 4:  # the paper's 4x4 conv on a 1x1 input: a dense layer
            h = EqualizedDense(16 * nf, gain=HE_GAIN / 4, dtype=self.dtype, name="dense4")(h)
            h = pixel_norm(leaky(h.reshape(h.shape[0], 4, 4, nf)))
        else:
            h = pixel_norm(leaky(self.conv(nf, f"conv{resolution}_up")(upsample(h))))
        return pixel_norm(leaky(self.conv(nf, f"conv{resolution}")(h)))

    @nn.compact
    def __call__(self, z: jax.Array, *, resolution: int, alpha: jax.Array = 1.0) -> jax.Array:
        sizes = resolutions(self.image_size)
        if resolution not in sizes:
            raise ValueError(f"resolution {resolution} is not one of {sizes}")
        h, previous = pixel_norm(z.astype(self.dtype)), None
        for r in sizes[:sizes.index(resolution) + 1]:
            previous, h = h, self.block(r, h)
        out = self.to_rgb(resolution, h)
        if resolution > 4:
            out = lerp(upsample(self.to_rgb(resolution // 2, previous)), out, alpha)
        if self.is_initializing():  # every resolution's toRGB exists from the start
            for r in sizes:
                if r not in (resolution, resolution // 2):
                    self.to_rgb(r, jnp.zeros((1, 1, 1, self.nf(r)), self.dtype))
        return out.astype(jnp.float32)


class Discriminator(nn.Module):
    """images [B, R, R, C] at resolution R -> scores [B] (a linear critic)."""

    image_size: int  # the final resolution, 4 * 2**k
    fmap_base: int = 8192
    max_channels: int = 512
    mbstd_group: int = 4  # examples per minibatch-stddev group (the paper's code: 4)
    dtype: jnp.dtype = jnp.float32

    def nf(self, resolution: int) -> int:
        return channels_at(resolution, self.fmap_base, self.max_channels)

    def conv(self, features: int, name: str, kernel_size: int = 3):
        return EqualizedConv(features, kernel_size, HE_GAIN, self.dtype, name=name)

    def from_rgb(self, resolution: int, x: jax.Array) -> jax.Array:
        return leaky(self.conv(self.nf(resolution), f"from_rgb{resolution}", 1)(x))

    def block(self, resolution: int, h: jax.Array) -> jax.Array:
        """Features at half of `resolution` from those at `resolution` (scores at 4x4)."""
        nf = self.nf(resolution)
        if resolution > 4:
            h = leaky(self.conv(nf, f"conv{resolution}")(h))
            h = leaky(self.conv(self.nf(resolution // 2), f"conv{resolution}_down")(h))
            return downsample(h)
        h = minibatch_stddev(h, self.mbstd_group)
        h = leaky(self.conv(nf, "conv4")(h))
        h = leaky(EqualizedDense(nf, dtype=self.dtype, name="dense4")(h.reshape(h.shape[0], -1)))
        return EqualizedDense(1, gain=1.0, dtype=self.dtype, name="score")(h)[:, 0]

    @nn.compact
    def __call__(self, x: jax.Array, *, resolution: int, alpha: jax.Array = 1.0) -> jax.Array:
        sizes = resolutions(self.image_size)
        if resolution not in sizes or x.shape[1] != resolution:
            raise ValueError(f"images of {x.shape[1]} pixels at resolution {resolution} "
                             f"(one of {sizes})")
        x = x.astype(self.dtype)
        h = self.from_rgb(resolution, x)
        if resolution > 4:
            h = lerp(self.from_rgb(resolution // 2, downsample(x)), self.block(resolution, h),
                     alpha)
        for r in reversed(sizes[:sizes.index(resolution)]):
            h = self.block(r, h)
        if resolution == 4:
            h = self.block(4, h)
        if self.is_initializing():  # every resolution's fromRGB exists from the start
            for r in sizes:
                if r not in (resolution, resolution // 2):
                    self.from_rgb(r, jnp.zeros((1, r, r, x.shape[-1]), self.dtype))
        return h.astype(jnp.float32)
