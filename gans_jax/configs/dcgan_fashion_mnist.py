"""DCGAN on Fashion-MNIST 28x28: the demo (`make demo`).

    python train.py --config gans_jax/configs/dcgan_fashion_mnist.py --workdir runs/fashion
Variants: `:smoke` runs a few steps in seconds.
"""

from gans_jax.configs import dcgan_base


def get_config(variant: str | None = None):
    c = dcgan_base.get_base_config()
    # The Debian package dataset-fashion-mnist puts the official idx files here; TFDS otherwise.
    c.data.path = "/usr/share/datasets/fashion-mnist"
    c.data.tfds_name = "fashion_mnist"
    c.model.image_size = 28
    c.model.channels = 1
    c.batch_size = 64  # more, smaller updates: recognisable clothing within minutes on a CPU
    c.num_steps = 3000  # 3.2 epochs
    return dcgan_base.with_variant(c, variant)
