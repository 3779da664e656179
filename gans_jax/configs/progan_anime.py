"""ProGAN on the 64x64 anime faces: 4 -> 8 -> 16 -> 32 -> 64, scaled down for a CPU.

    python train.py --config gans_jax/configs/progan_anime.py --workdir runs/progan_anime
    python train.py sample --workdir runs/progan_anime --growth   # the growth strip
Reads ../shared/data/anime-faces-64.tar.gz (extracted once to a cache folder).

Scaled down from the paper in two ways:
- widths: fmap_base 1024 and max_channels 128 (128 channels up to 16x16, 64 at 32x32, 32 at
  64x64) instead of 8192 and 512, z of 128 instead of 512;
- images shown: 10,000 per phase instead of the paper's 800,000 (80x fewer), so the 9 phases
  (4x4 stabilise, then fade + stabilise at 8, 16, 32, 64) show 90,000 images in all, 4.5
  passes over the 19,992 faces; batch 16 at every resolution, as the paper up to 128x128.
  That is 625 steps per phase, 5,625 steps in all (about an hour on 2 CPU cores).
Variants: `:smoke` grows 4 -> 8 -> 16 with tiny widths in 10 steps.
"""

from gans_jax.configs import progan_base
from gans_jax.configs.dcgan_anime import LOCAL_ANIME

IMAGES_PER_PHASE = 10_000  # the paper's 800,000 / 80


def get_config(variant: str | None = None):
    c = progan_base.get_base_config()
    c.data.path = str(LOCAL_ANIME.resolve())
    c.model.image_size = 64
    c.model.z_dim = 128
    c.model.fmap_base = 1024
    c.model.max_channels = 128
    c.schedule.batch_sizes = (16,) * 5
    c.schedule.fade_images = (IMAGES_PER_PHASE,) * 4
    c.schedule.stable_images = (IMAGES_PER_PHASE,) * 5
    c.sample_every = 500
    c.checkpoint_every = 500
    return progan_base.with_variant(c, variant)
