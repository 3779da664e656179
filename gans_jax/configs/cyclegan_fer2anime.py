"""CycleGAN between human faces (A: FER2013, 48x48 gray) and anime faces (B: 64x64 RGB), at
64x64 RGB.

    python train.py --config gans_jax/configs/cyclegan_fer2anime.py --workdir runs/fer2anime
    python train.py translate --workdir runs/fer2anime --direction a2b face.jpg --out out/

Reads ../shared/data/fer2013-48.tar.gz (its train split; the sample grids show its test split)
and ../shared/data/anime-faces-64.tar.gz (one folder, so every split is all of it: the grids
show its first images), each extracted once to a cache folder. The gray faces are tiled to RGB
(start-up warns that the domains' channels differ) and enlarged to 64 pixels.
Variants: `:smoke` runs a few steps in seconds.
"""

from pathlib import Path

import ml_collections

from gans_jax.configs import cyclegan_base

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    c = cyclegan_base.get_base_config()
    c.data.a = cyclegan_base.domain(path=str((SHARED_DATA / "fer2013-48.tar.gz").resolve()),
                                    split="train", test_split="test")
    c.data.b = cyclegan_base.domain(path=str((SHARED_DATA / "anime-faces-64.tar.gz").resolve()),
                                    split="train", test_split="train")
    c.data.load_size = 72  # the reference's 286/256 jitter, scaled to 64 pixels
    c.model.image_size = 64
    c.model.channels = 3
    c.model.g_width = 64
    c.model.g_blocks = 6  # the paper's generator for 128 px and below
    c.batch_size = 4  # the paper's 1 is slow per image on CPU
    c.num_steps = 50_000  # 10 epochs of the 19,992 anime faces
    c.log_every = 50
    c.sample_every = 1000
    c.checkpoint_every = 2000
    return cyclegan_base.with_variant(c, variant)
