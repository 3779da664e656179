"""ResNet50 (He et al. 2015, "Deep Residual Learning") in Flax Linen, NHWC, in two layouts.

Five stages: a stem (7x7/2 conv, batch norm, ReLU, 3x3/2 max pool), then four stages of
bottleneck blocks (3, 4, 6, 3 blocks of widths 64, 128, 256, 512, expanded 4x). Each stage
starts with a `ConvBlock` (1x1 -> 3x3 -> 1x1 convs plus a 1x1 conv + batch norm projection on
the shortcut; it changes the width and, from the third stage on, halves the resolution),
followed by `IdentityBlock`s (the same three convs around an identity shortcut). Global
average pooling gives the 2048-d features, and a dense layer the class logits.

The two layouts differ only where the pretrained weights of each framework need it:

- ``keras`` (Keras' ``keras.applications.ResNet50``): convs have biases, batch norm epsilon is
  1e-3, and a conv block's stride sits on its first 1x1 conv. 25,636,712 values with the
  1000-class head, as Keras counts them (``model.count_params()``: trainable weights plus the
  batch norms' moving mean and variance).
- ``torchvision`` (torchvision's ``resnet50``, the "v1.5" variant): convs without biases,
  epsilon 1e-5, the stride on the 3x3 conv. 25,557,032 parameters with the head, as PyTorch
  counts them (``sum(p.numel() for p in model.parameters())``: running statistics are buffers
  and not counted).

Inputs are float [B, H, W, 3]. With ``preprocess=None`` they are already preprocessed as the
weights expect; with "caffe" (Keras' ImageNet weights) or "torch" (torchvision's) they are RGB
images in [-1, 1] (this project's data pipeline) and the model applies that preprocessing
itself, so the network drops into the classifier trainer unchanged.

Variable names (the paths `classifiers_jax.resnet_weights` writes): ``stem`` (``conv1``, ``bn1``),
blocks ``stage{2..5}_{i}`` with ``conv1..3``/``bn1..3`` and, in conv blocks,
``proj_conv``/``proj_bn``; the classifier ``head``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from common_jax.batch_norm import BatchNorm
from common_jax.conv import Conv
from common_jax.errors import UserError

LAYOUTS = ("keras", "torchvision")
PREPROCESSING = ("caffe", "torch")
STAGES = ((2, 64, 3), (3, 128, 4), (4, 256, 6), (5, 512, 3))  # (stage, width, blocks)
EXPANSION = 4  # a bottleneck's output width over its inner width (2048 features at the end)
# Keras "caffe" mode: BGR order, ImageNet channel means subtracted, no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision: RGB in [0, 1], standardised per channel.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def caffe_preprocess(pixels: jax.Array) -> jax.Array:
    """RGB pixel values in [0, 255] -> Keras' "caffe" input (BGR, channel means subtracted)."""
    return pixels[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, pixels.dtype)


def torch_preprocess(pixels: jax.Array) -> jax.Array:
    """RGB pixel values in [0, 255] -> torchvision's input ([0, 1], standardised)."""
    mean = jnp.asarray(TORCH_MEAN, pixels.dtype)
    return (pixels / 255.0 - mean) / jnp.asarray(TORCH_STD, pixels.dtype)


def preprocess_unit_range(images: jax.Array, mode: str) -> jax.Array:
    """RGB images in [-1, 1] -> the input the pretrained weights of `mode` expect."""
    pixels = (images.astype(jnp.float32) + 1.0) * 127.5
    return caffe_preprocess(pixels) if mode == "caffe" else torch_preprocess(pixels)


class _Layers(nn.Module):
    """Settings of one layout and the conv / batch-norm factories both block types share.

    The factories create submodules of the module whose compact method calls them.
    """

    layout: str = "keras"
    train: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float | None = None  # None: the layout's
    axis_name: str | None = None
    dtype: Any = jnp.float32

    def conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
        # Explicit symmetric padding (not "SAME"): a strided 3x3 conv then matches PyTorch's
        # padding=1 on even sizes, where "SAME" would pad only the bottom/right.
        pad = (kernel - 1) // 2
        return Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad),) * 2,
                    use_bias=self.layout == "keras", dtype=self.dtype, name=name)

    def norm(self, name: str) -> BatchNorm:
        return BatchNorm(use_running_average=not self.train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon or (1e-3 if self.layout == "keras" else 1e-5),
                         axis_name=self.axis_name if self.train else None,
                         dtype=self.dtype, name=name)


class _Bottleneck(_Layers):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand), each with batch norm; ReLU after the sum."""

    width: int = 64
    stride: int = 1

    def residual(self, x: jax.Array) -> jax.Array:
        # Keras puts the stride on the first 1x1 conv; torchvision v1.5 on the 3x3 conv,
        # which sees every input position and is slightly more accurate.
        s1, s2 = (self.stride, 1) if self.layout == "keras" else (1, self.stride)
        y = nn.relu(self.norm("bn1")(self.conv(self.width, 1, s1, "conv1")(x)))
        y = nn.relu(self.norm("bn2")(self.conv(self.width, 3, s2, "conv2")(y)))
        return self.norm("bn3")(self.conv(self.width * EXPANSION, 1, 1, "conv3")(y))


class ConvBlock(_Bottleneck):
    """Bottleneck with a projection shortcut (1x1 conv + batch norm): new width or stride."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = self.conv(self.width * EXPANSION, 1, self.stride, "proj_conv")(x)
        shortcut = self.norm("proj_bn")(shortcut)
        return nn.relu(self.residual(x) + shortcut)


class IdentityBlock(_Bottleneck):
    """Bottleneck whose shortcut is the input itself (same width and resolution)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(self.residual(x) + x)


class Stem(_Layers):
    """7x7/2 conv -> batch norm -> ReLU -> 3x3/2 max pool (stage 1)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(self.norm("bn1")(self.conv(64, 7, 2, "conv1")(x)))
        # Padding with -inf or 0 is the same after a ReLU (Keras pads zeros, PyTorch -inf).
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet50(nn.Module):
    """ResNet50 -> float32 logits [B, num_classes], or pooled features [B, 2048].

    num_classes: None or 0 builds no head; the model then returns the pooled features.
    layout: "keras" or "torchvision" (see the module docstring).
    preprocess: None (inputs already preprocessed), "caffe" or "torch" (inputs in [-1, 1]).
    ``features_only=True`` in the call returns the pooled features even with a head (the head's
    parameters must still be there); the features are also sown into "intermediates".
    """

    num_classes: int | None = 1000
    layout: str = "keras"
    preprocess: str | None = None
    bn_momentum: float = 0.9  # flax convention (Keras' 0.99, PyTorch's 0.1 = flax 0.9)
    # None: the layout's (1e-3 / 1e-5). Keras 3 builds its ResNet50 with 1.001e-5 for the same
    # weights; the exported Keras 2 model these weights come from used 1e-3.
    bn_epsilon: float | None = None
    axis_name: str | None = None
    dtype: Any = jnp.float32  # computation dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False,
                 features_only: bool = False) -> jax.Array:
        if self.layout not in LAYOUTS:
            raise UserError(f"unknown ResNet50 layout '{self.layout}'; use one of "
                            f"{', '.join(LAYOUTS)}")
        if x.shape[-1] != 3:
            raise UserError(f"ResNet50 takes RGB images but got {x.shape[-1]}-channel images; "
                            "set --config.model.channels=3 (gray images are tiled to RGB)")
        if self.preprocess is not None:
            if self.preprocess not in PREPROCESSING:
                raise UserError(f"unknown ResNet50 preprocessing '{self.preprocess}'; use one "
                                f"of {', '.join(PREPROCESSING)}")
            x = preprocess_unit_range(x, self.preprocess)
        common = {"layout": self.layout, "train": train, "bn_momentum": self.bn_momentum,
                  "bn_epsilon": self.bn_epsilon, "axis_name": self.axis_name, "dtype": self.dtype}
        x = Stem(**common, name="stem")(x.astype(self.dtype))
        for stage, width, blocks in STAGES:
            stride = 1 if stage == 2 else 2  # the stem's max pool already halved stage 2
            x = ConvBlock(width=width, stride=stride, name=f"stage{stage}_0", **common)(x)
            for i in range(1, blocks):
                x = IdentityBlock(width=width, name=f"stage{stage}_{i}", **common)(x)
        features = jnp.mean(x, axis=(1, 2))
        self.sow("intermediates", "features", features)
        if features_only or not self.num_classes:
            return features.astype(jnp.float32)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(features)
        return logits.astype(jnp.float32)
