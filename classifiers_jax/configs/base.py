"""Settings shared by every classifier experiment; experiments override them.

Variants, chosen after the config path (``config.py:variant``) and combinable with "+":
  basic  the seeds' BasicCNN ([conv 5x5 -> pool -> act] x 2 -> dense), Adam 1e-3, constant,
         no augmentation
  smoke  tiny widths and a few steps: runs in seconds (tests, quick checks)
e.g. ``--config classifiers_jax/configs/mnist.py:basic+smoke``.
"""

import math
from pathlib import Path

import ml_collections

from common_jax.errors import UserError
from common_jax.population import population_config

VARIANTS = ("basic", "smoke")
# ../shared/data next to the project: real data for development (absent elsewhere)
SHARED_DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "classifiers_jax.trainers.classifier"  # the module whose train_and_evaluate runs
    c.seed = 0  # everything random (init, data order, augmentation, dropout) derives from it

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # idx folder, cifar-*-python folder, image folder or .tar.gz; "" -> TFDS
    c.data.tfds_name = ""  # used when path is empty or missing
    c.data.split = "train"
    c.data.eval_split = "test"  # evaluated whole every eval_every steps and at the end; "": none
    c.data.augment = "none"  # none, flip, crop, cifar (= crop after 4-pixel reflect pad + flip)
    c.data.label_mode = "fine"  # CIFAR-100 pickles: "fine" (100 classes) or "coarse" (20)
    c.data.labels_from_subfolders = True
    c.data.class_names = ()  # () -> taken from the data at training and saved with the config

    c.model = ml_collections.ConfigDict()
    c.model.arch = "cnn"  # basic (BasicCNN), cnn (CNN), fast (FastCIFARNet)
    c.model.num_classes = 10
    c.model.image_size = 28
    c.model.channels = 1
    c.model.width = 32  # first stage's filters (later stages: 2x per stage; fast: 4x)
    c.model.depth = 2  # cnn: stages of [conv-bn-act] x convs_per_stage + 2x2 max pool
    c.model.convs_per_stage = 2
    c.model.batch_norm = True  # cnn
    c.model.dropout = 0.0  # cnn: after every stage and before the head
    c.model.activation = "relu"  # any name in common_jax.activations.ACTIVATIONS
    c.model.head = "gap"  # cnn: "gap" (global average pool) or "flatten"
    c.model.hidden = 0  # basic/cnn: units of a hidden dense layer before the head (0: none)
    c.model.kernel_size = 5  # basic
    c.model.dtype = "float32"  # cnn/fast computation dtype; "bfloat16" is faster on GPUs

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd, adam, adamw
    c.optimizer.lr = 0.05  # peak learning rate
    c.optimizer.momentum = 0.9  # sgd
    c.optimizer.nesterov = True  # sgd
    c.optimizer.b1 = 0.9  # adam/adamw
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 5e-4  # L2 (sgd, adam) or decoupled (adamw); kernels only
    c.optimizer.schedule = "cosine"  # constant, linear_decay, cosine (after warmup), onecycle
    c.optimizer.warmup_steps = 0  # constant/cosine: linear warmup from 0
    c.optimizer.pct_start = 0.25  # onecycle: share of the steps spent rising to the peak
    c.optimizer.start_lr_fraction = 0.1  # onecycle: first lr as a fraction of the peak
    c.optimizer.final_lr_fraction = 0.0  # cosine/onecycle: last lr as a fraction of the peak
    c.optimizer.decay_steps = 0  # schedule length; 0 -> num_steps (fix it to extend a run)

    c.loss = ml_collections.ConfigDict()
    c.loss.label_smoothing = 0.0

    c.batch_size = 128  # global, over all devices and processes
    c.eval_batch_size = 512  # global; the last batch of the split is padded and masked
    c.num_steps = 5000
    c.eval_every = 1000  # steps between evaluations of the whole eval split (0: only at the end)
    c.tta_flip = False  # evaluation/classify: average the logits of the image and its mirror
    c.tta_translate = False  # evaluation/classify: add two views shifted by one pixel
    c.parallel = "shard_map"  # or "pmap"

    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True
    c.allow_config_change = False  # resume a workdir whose checkpoint has another config
    # K classifiers side by side in one compiled step, each with its own seed and values of
    # classifiers_jax.trainers.classifier.POPULATION_KEYS (docs/populations.md); 0: off.
    c.population = population_config()
    return c


def steps_for(epochs: float, num_examples: int, batch_size: int) -> int:
    """Training steps for `epochs` passes over `num_examples` at `batch_size`."""
    return int(math.ceil(epochs * num_examples / batch_size))


def with_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Applies "+"-separated variants (see the module docstring) in the order given.

    An unknown name is a UserError: train.py prints it as one line while parsing --config
    (ml_collections would bury a ValueError in a traceback)."""
    for name in (variant or "").split("+"):
        if not name:
            continue
        if name not in VARIANTS:
            raise UserError(f"unknown config variant '{name}'; classifier configs have: "
                            f"{', '.join(VARIANTS)}; put them after the ':' in --config, "
                            "combined with '+' (e.g. mnist.py:basic+smoke), or leave it out")
        c = {"basic": basic, "smoke": smoke}[name](c)
    return c


def basic(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The seeds' BasicCNN with Adam at a constant learning rate, without augmentation."""
    c.model.arch = "basic"
    c.data.augment = "none"
    c.model.width = 32
    c.model.kernel_size = 5
    c.model.hidden = 0
    c.optimizer.name = "adam"
    c.optimizer.lr = 1e-3
    c.optimizer.schedule = "constant"
    c.optimizer.weight_decay = 0.0
    c.loss.label_smoothing = 0.0
    c.tta_flip = False
    c.tta_translate = False
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any classifier config to a run of seconds (tests, quick checks)."""
    c.model.width = 4
    c.model.hidden = min(c.model.hidden, 8)
    c.batch_size = 16
    c.eval_batch_size = 256
    c.num_steps = 6
    c.eval_every = 3
    c.log_every = 2
    c.checkpoint_every = 3
    c.progress_bar = False
    return c
