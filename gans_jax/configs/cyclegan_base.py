"""CycleGAN settings: the paper's defaults (horse2zebra at 256 px); experiments override.

    python train.py --config gans_jax/configs/cyclegan_base.py --workdir runs/horse2zebra
    python train.py --config gans_jax/configs/cyclegan_base.py:smoke --workdir /tmp/smoke \
        --config.data.a.path=DIR_A --config.data.b.path=DIR_B
    python train.py translate --workdir runs/horse2zebra --direction a2b horse.jpg --out out/

Each domain is a data section (`data.a`, `data.b`) as `common_jax.data.load_source` reads it:
`path` (a folder, or a .tar.gz of one) or else `tfds_name`, the training `split` and the
`test_split` whose first images fill the sample grids. In the reference layout one root folder
holds trainA/, trainB/, testA/ and testB/ and the splits are those names (TFDS
`cycle_gan/horse2zebra` has the same split names); a folder that is all one domain's images is
read whole, whatever the split.
Variants: `:smoke` (16 px, tiny widths, a few steps in seconds).
"""

import ml_collections

from common_jax import optim
from common_jax.errors import UserError

VARIANTS = ("smoke",)


def domain(*, path: str = "", tfds_name: str = "", split: str = "train",
           test_split: str = "test") -> ml_collections.ConfigDict:
    """One domain's data section."""
    return ml_collections.ConfigDict({"path": path, "tfds_name": tfds_name, "split": split,
                                      "test_split": test_split})


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "gans_jax.trainers.cyclegan"
    c.seed = 0  # init, both data orders and jitter, the pools' choices

    c.data = ml_collections.ConfigDict()
    # The reference's jitter: load at 286, random 256 crop, random left-right flip.
    c.data.load_size = 286
    c.data.augment = "resize_crop_flip"  # any of common_jax.data.AUGMENTATIONS ("none": off)
    c.data.a = domain(tfds_name="cycle_gan/horse2zebra", split="trainA", test_split="testA")
    c.data.b = domain(tfds_name="cycle_gan/horse2zebra", split="trainB", test_split="testB")

    c.model = ml_collections.ConfigDict()
    c.model.image_size = 256
    c.model.channels = 3  # both domains are converted to it (gray tiled, RGB averaged)
    c.model.g_width = 64  # ngf
    c.model.g_blocks = 9  # residual blocks: the paper uses 6 at 128 px and below, 9 at 256
    c.model.d_width = 64  # ndf
    c.model.d_layers = 3  # stride-2 convs of the PatchGAN: 3 is the 70x70 one
    c.model.d_slope = 0.2  # LeakyReLU
    # "transpose3" is the reference's k3 s2 transposed conv; "nearest"/"bilinear" resize + conv
    # and "pixel_shuffle" are free of its checkerboard pattern (gans_jax.layers.UPSAMPLE).
    c.model.upsample = "transpose3"
    # The transposed convs' form: "auto" is the sub-pixel one on a CPU without the oneDNN
    # extension, where XLA's own ("xla") differentiates its kernel slowly, and "xla" otherwise
    # (gans_jax.layers.resolve_impl); the same function either way.
    c.model.upsample_impl = "auto"
    c.model.g_norm = "instance"  # affine-free, as the reference; instance_affine, none
    c.model.d_norm = "instance"
    c.model.dtype = "float32"  # computation dtype ("bfloat16": params stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.kind = "lsgan"  # any of gans_jax.losses.LOSSES
    c.loss.real_label = 1.0  # D's real target (one-sided smoothing: e.g. 0.9)
    c.loss.lambda_a = 10.0  # cycle A -> B -> A (L1)
    c.loss.lambda_b = 10.0  # cycle B -> A -> B
    c.loss.identity = 0.5  # identity L1 weight, relative to lambda (0: off)
    c.pool_size = 50  # past fakes per domain shown to D (0: only the newest)

    # Adam 2e-4, beta1 0.5: constant for the first half, then linear to zero (the paper's 100
    # + 100 epochs), for all four networks.
    c.optimizer = optim.optimizer_config(name="adam", lr=2e-4, b1=0.5, b2=0.999,
                                         schedule="linear_decay", constant_fraction=0.5)

    c.batch_size = 1  # global, per domain; the paper's 1 (larger ones train faster per image)
    c.num_steps = 200 * 1067  # 200 epochs of horse2zebra's 1,067 horses at batch 1
    c.parallel = "shard_map"  # or "pmap"

    c.log_every = 100
    c.sample_every = 2000  # grids A | G(A) | F(G(A)) and B | F(B) | G(F(B)), checkerboard meter
    c.num_samples = 8  # test images per domain in a grid
    c.checkpoint_every = 5000
    c.keep_checkpoints = 3
    c.progress_bar = True
    c.allow_config_change = False
    return c


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The paper's horse2zebra run (TFDS `cycle_gan/horse2zebra`)."""
    return with_variant(get_base_config(), variant)


def with_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Applies a named variant (only `smoke` so far); an unknown one is a UserError."""
    if variant == "smoke":
        return smoke(c)
    if variant:
        raise UserError(f"unknown config variant '{variant}'; CycleGAN configs have: "
                        f"{', '.join(VARIANTS)}; put one after the ':' in --config "
                        "(e.g. cyclegan_base.py:smoke) or leave the ':' out")
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks any CycleGAN config to a run of seconds (tests, quick checks)."""
    c.model.image_size = 16
    c.data.load_size = 18
    c.model.g_width = 4
    c.model.g_blocks = 1
    c.model.d_width = 4
    c.model.d_layers = 2  # 3 stride-2 layers leave no patch of a 16-pixel image
    c.pool_size = 4
    c.batch_size = 2
    c.num_steps = 6
    c.log_every = 2
    c.sample_every = 3
    c.num_samples = 4
    c.checkpoint_every = 3
    c.progress_bar = False
    return c
