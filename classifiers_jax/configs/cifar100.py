"""CNN classifier on CIFAR-100 32x32 RGB (100 fine classes; `data.label_mode="coarse"` for the
20 superclasses, with --config.model.num_classes=20).

    python train.py --config classifiers_jax/configs/cifar100.py --workdir runs/cls_cifar100
Reads the standard python version (a `cifar-100-python` folder with train, test and meta, or
its .tar.gz) from ../shared/data/cifar-100-python when present or from --config.data.path, else
TFDS `cifar100`.
Variants: `:basic` (the seeds' BasicCNN), `:smoke` (seconds), `:basic+smoke`.
Model: 3 stages of [conv3x3-BN-ReLU] x 2 + max pool (64, 128, 256 filters), dropout 0.1,
global average pool, dense; crop + flip; SGD-Nesterov 0.1 with cosine decay, weight decay 5e-4,
batch 128, 60 epochs.
Test accuracy: not yet measured.
"""

from classifiers_jax.configs import base
from classifiers_jax.configs.base import SHARED_DATA
from classifiers_jax.configs.cifar10 import cifar_data

LOCAL_CIFAR100 = SHARED_DATA / "cifar-100-python"
EPOCHS = 60
TRAIN_EXAMPLES = 50_000


def get_config(variant: str | None = None):
    c = cifar_data(base.get_base_config(), LOCAL_CIFAR100, "cifar100")
    c.data.label_mode = "fine"
    c.model.num_classes = 100
    c.model.width = 64
    c.model.depth = 3
    c.model.dropout = 0.1
    c.optimizer.lr = 0.1
    c.batch_size = 128
    c.num_steps = base.steps_for(EPOCHS, TRAIN_EXAMPLES, c.batch_size)
    c.eval_every = 2000
    return base.with_variant(c, variant)
