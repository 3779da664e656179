"""ProGAN as the paper trains it: CelebA-HQ, 4x4 -> 1024x1024 (not run here: the paper's run
took 4 days on 8 V100 GPUs, and TFDS builds the data from a manual download).

    python train.py --config gans_jax/configs/progan_celeba_hq.py --workdir runs/celebahq
Data: TFDS `celeb_a_hq/1024` (see its catalogue page for the manual download and the
preparation step); or point --config.data.path at a folder of 1024x1024 faces.
Everything is the paper's: widths 512 up to 32x32 then halving (fmap_base 8192), z of 512,
batch 16 up to 128x128 then 14, 6, 3, and 800,000 images in every fade and every stabilise
phase (17 phases, 13.6 million images, 1,464,288 steps); 23.1 million parameters in
each network, as the paper reports.

To stop growing at 256x256 (7 resolutions), shorten the three lists to match:
    --config.model.image_size=256 --config.data.tfds_name=celeb_a_hq/256 \
    --config.schedule.batch_sizes="(16, 16, 16, 16, 16, 16, 14)" \
    --config.schedule.fade_images="(800000, 800000, 800000, 800000, 800000, 800000)" \
    --config.schedule.stable_images="(800000, 800000, 800000, 800000, 800000, 800000, 800000)"
Variants: `:smoke` (tiny widths, 4 -> 8 -> 16, for checking the set-up only).
"""

from gans_jax.configs import progan_base


def get_config(variant: str | None = None):
    c = progan_base.get_base_config()
    c.data.tfds_name = "celeb_a_hq/1024"
    c.model.image_size = 1024
    c.sample_every = 10_000
    c.checkpoint_every = 10_000
    return progan_base.with_variant(c, variant)
