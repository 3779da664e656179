"""Settings shared by every autoencoder experiment; experiments override them.

Variants, chosen after the config path (``config.py:variant``) and combinable with "+":
  map    the bottleneck as a latent feature map (model.latent_kind = "map")
  smoke  tiny widths and a few steps: runs in seconds (tests, quick checks)
"""

import ml_collections

from classifiers_jax.configs.base import SHARED_DATA, steps_for
from common_jax.errors import UserError

VARIANTS = ("map", "smoke")
__all__ = ["SHARED_DATA", "get_base_config", "steps_for", "with_variant"]


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "autoencoders_jax.trainers.autoencoder"
    c.seed = 0  # initialisation and data order derive from it

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # image folder or .tar.gz with train/ and test/; "" -> TFDS
    c.data.tfds_name = ""
    c.data.split = "train"
    c.data.eval_split = "test"  # evaluated whole every eval_every steps and at the end
    c.data.augment = "flip"  # none, flip, crop, cifar
    c.data.labels_from_subfolders = True  # labels: only for `train.py features`

    c.model = ml_collections.ConfigDict()
    c.model.image_size = 32
    c.model.channels = 3
    c.model.widths = (64, 128, 256)  # one stage per width, each halving H and W
    c.model.convs_per_stage = 2  # a strided 4x4 conv + (n - 1) 3x3 convs per stage
    c.model.latent_kind = "vector"  # "vector" (dense to latent_size) or "map"
    c.model.latent_size = 256  # values in the bottleneck; "map": a multiple of the map's cells
    c.model.norm = "none"  # none, batch, layer, group
    c.model.activation = "gelu"  # any name in common_jax.activations
    c.model.upsample = "transpose4"  # any gans_jax.layers.UPSAMPLE method

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "mse"  # mse or l1, per pixel on the [-1, 1] data
    c.loss.ssim_weight = 0.0  # adds ssim_weight * (1 - SSIM)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adam"
    c.optimizer.lr = 2e-3  # peak
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "onecycle"
    c.optimizer.warmup_steps = 0
    c.optimizer.pct_start = 0.15
    c.optimizer.start_lr_fraction = 0.1
    c.optimizer.final_lr_fraction = 0.0
    c.optimizer.decay_steps = 0

    c.batch_size = 128
    c.eval_batch_size = 512
    c.num_steps = 5000
    c.eval_every = 1000  # 0: only at the end
    c.sample_every = 1000  # originals-over-reconstructions grids; 0: only at the end
    c.parallel = "shard_map"  # or "pmap"

    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True
    c.allow_config_change = False
    return c


def with_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Applies "+"-separated variants (module docstring) in the order given."""
    for name in (variant or "").split("+"):
        if not name:
            continue
        if name not in VARIANTS:
            raise UserError(f"unknown config variant '{name}'; autoencoder configs have: "
                            f"{', '.join(VARIANTS)}; put them after the ':' in --config, "
                            "combined with '+' (e.g. cifar10.py:map+smoke), or leave it out")
        c = {"map": latent_map, "smoke": smoke}[name](c)
    return c


def latent_map(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The bottleneck as a feature map (latent_size / cells channels)."""
    c.model.latent_kind = "map"
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any autoencoder config to a run of seconds (tests, quick checks)."""
    c.model.widths = (4, 8)
    c.model.latent_size = 64  # a "map" at 32x32 (8x8 cells) or 16x16 (4x4) holds it
    c.batch_size = 16
    c.eval_batch_size = 64
    c.num_steps = 6
    c.eval_every = 3
    c.sample_every = 3
    c.log_every = 2
    c.checkpoint_every = 3
    c.progress_bar = False
    return c
