"""DCGAN on MNIST 28x28.

    python train.py --config gans_jax/configs/dcgan_mnist.py --workdir runs/mnist
Reads the idx files in ../shared/data/mnist when that folder exists, else TFDS `mnist`.
Variants: `:smoke` runs a few steps in seconds.
"""

from pathlib import Path

from gans_jax.configs import dcgan_base

LOCAL_MNIST = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "mnist"


def get_config(variant: str | None = None):
    c = dcgan_base.get_base_config()
    c.data.path = str(LOCAL_MNIST.resolve()) if LOCAL_MNIST.exists() else ""
    c.data.tfds_name = "mnist"
    c.model.image_size = 28
    c.model.channels = 1
    c.batch_size = 64
    c.num_steps = 3000
    return dcgan_base.with_variant(c, variant)
