"""CNN classifiers (Flax Linen, NHWC): `BasicCNN`, `CNN` and `FastCIFARNet`.

Every model maps images in [-1, 1], float [B, H, W, channels], to float32 logits
[B, num_classes] and takes its activation by name (`common_jax.activations`). ``train=True``
uses batch statistics in batch norm (averaged over the device axis `axis_name` when set) and
turns dropout on (it draws from the "dropout" rng). Images with another channel count than the
model was built for are refused with a `UserError`.

- `BasicCNN`: the seeds' network, [conv 5x5 -> 2x2 max pool -> activation] x 2, flatten, an
  optional hidden dense layer, dense to the classes. No normalisation.
- `CNN`: a compact VGG-style network for 28x28 gray and 32x32 RGB images: `depth` stages of
  [conv 3x3 -> batch norm -> activation] x `convs_per_stage` + 2x2 max pool, widths doubling
  per stage, then global average pooling (or flatten) and a dense head.
- `FastCIFARNet`: after the ideas of the fastest known CIFAR-10 trainers (Keller Jordan's
  airbench): a narrow stem, three blocks [conv -> max pool -> BN -> GELU -> conv -> BN -> GELU]
  of widths w/4w/4w (64/256/256), global max pooling and a bias-free linear head whose logits
  are scaled down, which keeps early training from saturating the softmax. Few, wide layers at
  low resolution keep it fast on CPU and GPU. (No whitening-initialised first layer here.)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax.activations import Activation
from common_jax.batch_norm import BatchNorm
from common_jax.conv import Conv
from common_jax.dropout import BatchDropout
from common_jax.errors import UserError
from common_jax.pooling import max_pool_2x2

HEADS = ("gap", "flatten")


def check_channels(x: jax.Array, channels: int) -> None:
    """Refuses images whose channel count is not the one the model was built for."""
    have = x.shape[-1]
    if have != channels:
        raise UserError(
            f"the classifier was built for {channels}-channel images but got {have}-channel "
            f"images; set --config.model.channels={have} to match the data (or convert the "
            f"data to {channels} channels)")


def check_downsampling(x: jax.Array, halvings: int, what: str) -> None:
    """Refuses images too small for the network's 2x2 poolings."""
    smallest = min(x.shape[1], x.shape[2])
    if smallest < 2**halvings:
        raise UserError(
            f"{smallest}x{smallest} images are too small for {halvings} 2x2 poolings; lower "
            f"{what} or raise --config.model.image_size to at least {2**halvings}")


def global_max_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C], the maximum over positions.

    Taken at the arg max found in the forward pass, so the gradient goes to that position.
    `jnp.max`'s gradient instead compares the input with the output again, and an input
    recomputed a hair differently (XLA may fuse the two differently) gets no gradient at all.
    """
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    index = jnp.argmax(flat, axis=1)[:, None, :]
    return jnp.take_along_axis(flat, index, axis=1)[:, 0, :]


def _batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str,
                momentum: float = 0.9) -> BatchNorm:
    # axis_name: statistics of the global batch, so N devices match one device.
    return BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5,
                     axis_name=axis_name if train else None, dtype=dtype, name=name)


class BasicCNN(nn.Module):
    """conv(w, 5x5) -> pool -> act -> conv(2w, 5x5) -> pool -> act -> flatten -> dense."""

    num_classes: int = 10
    channels: int = 1
    width: int = 32  # filters of the first conv; the second has twice as many
    kernel_size: int = 5
    hidden: int = 0  # units of an optional hidden dense layer (0: none)
    activation: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # nothing behaves differently in training
        check_channels(x, self.channels)
        check_downsampling(x, 2, "nothing (BasicCNN pools twice)")
        x = x.astype(self.dtype)
        k = (self.kernel_size, self.kernel_size)
        for i, features in enumerate((self.width, 2 * self.width)):
            x = Conv(features, k, padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
            x = max_pool_2x2(x)
            x = Activation(self.activation, name=f"act{i}")(x)
        x = x.reshape((x.shape[0], -1))
        if self.hidden:
            x = Activation(self.activation, name="act_hidden")(
                nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
        self.sow("intermediates", "features", x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


class CNN(nn.Module):
    """`depth` stages of [conv3x3-BN-act] x k + max pool (widths w, 2w, 4w, ...), pooled head."""

    num_classes: int = 10
    channels: int = 1
    width: int = 32
    depth: int = 2
    convs_per_stage: int = 2
    batch_norm: bool = True
    dropout: float = 0.0  # after every stage and before the head
    activation: str = "relu"
    head: str = "gap"  # "gap": global average pooling; "flatten": all positions
    hidden: int = 0  # units of an optional hidden dense layer (0: none)
    axis_name: str | None = None
    dtype: Any = jnp.float32  # computation dtype (bfloat16 on GPUs); parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_channels(x, self.channels)
        check_downsampling(x, self.depth, "--config.model.depth")
        if self.head not in HEADS:
            raise UserError(f"unknown head '{self.head}'; set --config.model.head to one of "
                            f"{', '.join(HEADS)}")
        x = x.astype(self.dtype)
        for stage in range(self.depth):
            features = self.width * 2**stage
            for i in range(self.convs_per_stage):
                name = f"stage{stage}_conv{i}"
                # A bias before batch norm would be cancelled by its mean subtraction.
                x = Conv(features, (3, 3), padding="SAME", use_bias=not self.batch_norm,
                         dtype=self.dtype, name=name)(x)
                if self.batch_norm:
                    x = _batch_norm(train, self.axis_name, self.dtype, f"{name}_bn")(x)
                x = Activation(self.activation, name=f"{name}_act")(x)
            x = max_pool_2x2(x)
            x = BatchDropout(self.dropout, self.axis_name)(x, deterministic=not train)
        x = jnp.mean(x, axis=(1, 2)) if self.head == "gap" else x.reshape((x.shape[0], -1))
        if self.hidden:
            x = nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x)
            x = Activation(self.activation, name="act_hidden")(x)
            x = BatchDropout(self.dropout, self.axis_name)(x, deterministic=not train)
        self.sow("intermediates", "features", x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


class FastCIFARNet(nn.Module):
    """Stem, then three [conv-pool-BN-act-conv-BN-act] blocks (w, 4w, 4w), max-pooled head."""

    num_classes: int = 10
    channels: int = 3
    width: int = 64  # first block; the other two have 4x (64/256/256 at the default)
    stem_width: int = 0  # 0: width // 2
    activation: str = "gelu"
    logit_scale: float = 0.125  # small initial logits: a gentler start with a high learning rate
    bn_momentum: float = 0.8  # short runs: running averages that follow the weights quickly
    axis_name: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        check_channels(x, self.channels)
        check_downsampling(x, 3, "nothing (FastCIFARNet pools three times)")
        x = x.astype(self.dtype)

        def conv(y, features, name):
            return Conv(features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype,
                        name=name)(y)

        def norm_act(y, name):
            y = _batch_norm(train, self.axis_name, self.dtype, f"{name}_bn", self.bn_momentum)(y)
            return Activation(self.activation, name=f"{name}_act")(y)

        x = norm_act(conv(x, self.stem_width or max(self.width // 2, 1), "stem"), "stem")
        for i, features in enumerate((self.width, 4 * self.width, 4 * self.width)):
            # Pooling right after the first conv halves the work of everything after it.
            x = max_pool_2x2(conv(x, features, f"block{i}_conv0"))
            x = norm_act(x, f"block{i}_0")
            x = norm_act(conv(x, features, f"block{i}_conv1"), f"block{i}_1")
        x = global_max_pool(x)
        self.sow("intermediates", "features", x)
        logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, name="head")(x)
        return (logits * self.logit_scale).astype(jnp.float32)
