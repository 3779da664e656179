"""Small data sets and configs the tests write for themselves."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from common_jax.config_utils import apply_overrides
from gans_jax.configs import dcgan_mnist


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train"):
    """Writes MNIST-format idx .gz files."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())
    return folder


def tiny_digits(folder: Path, n: int = 96, seed: int = 0) -> Path:
    """A small random 28x28 idx data set (enough for the training mechanics)."""
    rng = np.random.RandomState(seed)
    return write_idx(folder, rng.randint(0, 256, (n, 28, 28)), rng.randint(0, 10, n))


def smoke_config(data_path: Path, **overrides):
    """The MNIST DCGAN smoke config on a given idx folder."""
    c = dcgan_mnist.get_config("smoke")
    c.data.path = str(data_path)
    c.data.tfds_name = ""
    return apply_overrides(c, overrides)


def random_digits(folder: Path) -> Path:
    """Random labelled 28x28 digits in MNIST's files: 96 train and 40 test images."""
    rng = np.random.RandomState(0)
    write_idx(folder, rng.randint(0, 256, (96, 28, 28)), rng.randint(0, 10, 96))
    write_idx(folder, rng.randint(0, 256, (40, 28, 28)), rng.randint(0, 10, 40), prefix="t10k")
    return folder
