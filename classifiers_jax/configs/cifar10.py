"""CNN classifier on CIFAR-10 32x32 RGB: a deeper VGG-style CNN with batch norm.

    python train.py --config classifiers_jax/configs/cifar10.py --workdir runs/cls_cifar10
Reads ../shared/data/cifar10-jpg.tar.gz (train/<class>/*.jpg, test/<class>/*.jpg, JPEG quality
about 75: not pixel-identical to the original data) when present, else TFDS `cifar10`. A
cifar-10-batches-py folder (the python version) works too, via --config.data.path.
Variants: `:basic` (the seeds' BasicCNN), `:smoke` (seconds), `:basic+smoke`.
Model: 3 stages of [conv3x3-BN-ReLU] x 2 + max pool (64, 128, 256 filters), global average
pool, dense; random crop (4-pixel reflect padding) + flip; SGD-Nesterov 0.1 with cosine decay,
weight decay 5e-4, batch 128, 40 epochs.
Test accuracy: not yet measured.
"""

from pathlib import Path

from classifiers_jax.configs import base
from classifiers_jax.configs.base import SHARED_DATA

LOCAL_CIFAR10 = SHARED_DATA / "cifar10-jpg.tar.gz"
EPOCHS = 40
TRAIN_EXAMPLES = 50_000


def cifar_data(c, local: Path, tfds_name: str):
    """32x32 RGB CIFAR data: the local copy when present, else TFDS; crop + flip."""
    c.data.path = str(local) if local.exists() else ""
    c.data.tfds_name = tfds_name
    c.data.augment = "cifar"
    c.model.image_size = 32
    c.model.channels = 3
    return c


def get_config(variant: str | None = None):
    c = cifar_data(base.get_base_config(), LOCAL_CIFAR10, "cifar10")
    c.model.width = 64
    c.model.depth = 3
    c.optimizer.lr = 0.1
    c.batch_size = 128
    c.num_steps = base.steps_for(EPOCHS, TRAIN_EXAMPLES, c.batch_size)
    c.eval_every = 2000
    return base.with_variant(c, variant)
