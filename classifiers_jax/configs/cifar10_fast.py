"""FastCIFARNet on CIFAR-10, tuned for time to accuracy (after the ideas of Keller Jordan's
airbench: few wide conv-BN-GELU layers at low resolution, label smoothing 0.2, SGD-Nesterov with
a linear one-cycle schedule, crop + flip augmentation, flip and one-pixel-shift test-time
augmentation, 14 epochs).

    python train.py --config classifiers_jax/configs/cifar10_fast.py --workdir runs/cls_fast
    # on a GPU also: --config.model.dtype=bfloat16
Reads ../shared/data/cifar10-jpg.tar.gz when present, else TFDS `cifar10`.
Variants: `:basic` (the seeds' BasicCNN), `:smoke` (seconds), `:basic+smoke`.
Model: stem conv (32) and blocks of 64/256/256 filters, global max pool, bias-free linear head
with logits scaled by 1/8; batch 512, peak lr 0.4 (rising over the first 20% of steps), weight
decay 5e-4, 14 epochs.
Test accuracy and time on a 2-core CPU, 8 forced CPU devices (docs/classifiers.md): the full
14 epochs 90.46% in 110 minutes (final evaluation only, --config.eval_every=0); 10 epochs
(--config.num_steps=977) 89.46%; 6 epochs (--config.num_steps=586, flips only) 87.45%.
"""

from classifiers_jax.configs import base
from classifiers_jax.configs.cifar10 import LOCAL_CIFAR10, TRAIN_EXAMPLES, cifar_data

EPOCHS = 14


def get_config(variant: str | None = None):
    c = cifar_data(base.get_base_config(), LOCAL_CIFAR10, "cifar10")
    c.model.arch = "fast"
    c.model.width = 64
    c.model.activation = "gelu"
    c.loss.label_smoothing = 0.2
    c.optimizer.name = "sgd"
    c.optimizer.nesterov = True
    c.optimizer.momentum = 0.9
    c.optimizer.lr = 0.4
    c.optimizer.weight_decay = 5e-4
    c.optimizer.schedule = "onecycle"
    c.optimizer.pct_start = 0.2
    c.optimizer.start_lr_fraction = 0.1
    c.optimizer.final_lr_fraction = 0.0
    c.tta_flip = True
    c.tta_translate = True
    c.batch_size = 512
    c.eval_batch_size = 1000  # a multiple of 1, 2, 4 and 8 devices
    c.num_steps = base.steps_for(EPOCHS, TRAIN_EXAMPLES, c.batch_size)
    c.eval_every = 400  # an evaluation with both TTAs takes about 2 minutes on 2 cores
    c.log_every = 20
    c.checkpoint_every = 200
    return base.with_variant(c, variant)
