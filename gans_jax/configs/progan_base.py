"""Settings shared by every ProGAN experiment (Karras et al. 2017's defaults, full size);
experiments override the data, the widths and the schedule.

The schedule: resolutions 4, 8, ..., model.image_size. Resolution 4 has one phase (stabilise);
every later one a fade-in phase, then a stabilise phase. `schedule.batch_sizes` has one entry
per resolution, `schedule.fade_images` one per resolution after 4, `schedule.stable_images` one
per resolution: tuples, on the command line e.g. --config.schedule.batch_sizes="(16, 16, 8)".
A phase lasts ceil(images / batch size) steps. `num_steps` is derived from them (0: the whole
schedule; a smaller value stops early, and the same command with 0 resumes to the end).
Variants: `smoke` (4 -> 8 -> 16, tiny widths, 10 steps) and `at<R>` (growth stopped at R x R;
the benchmarks time its last stage), joined by '+' (e.g. at16+smoke).
"""

import ml_collections

from common_jax.errors import UserError

VARIANTS = ("smoke", "at<R>")
PAPER_IMAGES_PER_PHASE = 800_000  # images shown in each fade and each stabilise phase


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "gans_jax.trainers.progan"
    c.seed = 0  # everything random (init, data order, z) derives from it

    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # image folder or .tar.gz of one; "" -> tfds_name
    c.data.tfds_name = ""
    c.data.split = "train"

    c.model = ml_collections.ConfigDict()
    c.model.image_size = 1024  # the final resolution, 4 * 2**k (the paper: 1024)
    c.model.channels = 3
    c.model.z_dim = 512
    # Channels at resolution R: min(max_channels, fmap_base * 2 // R); the paper: 8192 and 512
    # (512 up to 32x32, then halving). Lower both to shrink the networks for a CPU.
    c.model.fmap_base = 8192
    c.model.max_channels = 512
    c.model.mbstd_group = 4  # examples per minibatch-stddev group (the paper's code)
    c.model.dtype = "float32"  # computation dtype ("bfloat16": params stay float32)

    c.schedule = ml_collections.ConfigDict()
    # The paper: batch 16 up to 128x128, then 14, 6, 3 (memory-bound); 800k images per phase.
    c.schedule.batch_sizes = (16, 16, 16, 16, 16, 16, 14, 6, 3)
    c.schedule.fade_images = (PAPER_IMAGES_PER_PHASE,) * 8
    c.schedule.stable_images = (PAPER_IMAGES_PER_PHASE,) * 9

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.lr = 1e-3  # the paper: Adam lr 0.001, beta1 0, beta2 0.99, eps 1e-8
    c.optimizer.b1 = 0.0
    c.optimizer.b2 = 0.99
    c.optimizer.eps = 1e-8
    c.optimizer.reset_per_stage = True  # fresh Adam moments when a resolution starts (their code)

    c.loss = ml_collections.ConfigDict()
    c.loss.gradient_penalty = 10.0  # WGAN-GP lambda
    c.loss.drift = 0.001  # epsilon_drift * E[D(x)^2]

    c.ema_decay = 0.999  # G's weight average, used for samples
    c.num_steps = 0  # 0: the whole schedule; fewer stops early (resume with 0)
    c.parallel = "shard_map"  # or "pmap"

    c.log_every = 50
    c.sample_every = 1000  # fixed-z grid at the current resolution
    c.num_samples = 64
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True
    c.allow_config_change = False
    return c


def with_variant(c: ml_collections.ConfigDict, variant: str | None) -> ml_collections.ConfigDict:
    """Applies named variants, joined by '+' (e.g. "at16+smoke"): `smoke`, then `at<R>`.
    An unknown name is a UserError."""
    names = [name for name in (variant or "").split("+") if name]
    unknown = [n for n in names if n != "smoke" and not (n.startswith("at") and n[2:].isdigit())]
    if unknown:
        raise UserError(f"unknown config variant '{unknown[0]}'; ProGAN configs have: "
                        f"{', '.join(VARIANTS)}; put one after the ':' in --config "
                        "(e.g. progan_anime.py:smoke) or leave the ':' out")
    if "smoke" in names:
        c = smoke(c)
    for name in names:
        if name != "smoke":
            c = grown_to(c, int(name[2:]))
    return c


def grown_to(c: ml_collections.ConfigDict, resolution: int) -> ml_collections.ConfigDict:
    """`at<R>`: the same run stopped growing at R x R (the schedule's lists cut, or extended by
    their last entry). The benchmarks time its last stage: the train step at R x R."""
    n = max(1, resolution.bit_length() - 2)  # resolutions 4 .. R; R itself is checked later
    s = c.schedule

    def fitted(values, length):
        values = list(values)
        return tuple((values + values[-1:] * length)[:length])

    c.model.image_size = resolution
    s.batch_sizes = fitted(s.batch_sizes, n)
    s.fade_images = fitted(s.fade_images, n - 1)
    s.stable_images = fitted(s.stable_images, n)
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Any ProGAN config shrunk to 4 -> 8 -> 16 with tiny widths: 10 steps, seconds."""
    c.model.image_size = 16
    c.model.z_dim = 16
    c.model.fmap_base = 32
    c.model.max_channels = 16
    c.schedule.batch_sizes = (8, 8, 8)
    c.schedule.fade_images = (16, 16)  # 2 steps each
    c.schedule.stable_images = (16, 16, 16)
    c.log_every = 2
    c.sample_every = 4
    c.num_samples = 16
    c.checkpoint_every = 5
    c.progress_bar = False
    return c
