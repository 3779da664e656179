"""DCGAN on 64x64 anime faces (the paper's 64x64 architecture, ngf = ndf = 64).

    python train.py --config gans_jax/configs/dcgan_anime.py --workdir runs/anime
Reads ../shared/data/anime-faces-64.tar.gz (extracted once to a cache folder); point
--config.data.path at any folder of face images to use your own.
Variants: `:smoke` runs a few steps in seconds.
"""

from pathlib import Path

from gans_jax.configs import dcgan_base

LOCAL_ANIME = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
               / "anime-faces-64.tar.gz")


def get_config(variant: str | None = None):
    c = dcgan_base.get_base_config()
    c.data.path = str(LOCAL_ANIME.resolve())
    c.model.image_size = 64
    c.model.channels = 3
    c.batch_size = 64
    c.num_steps = 20_000
    c.sample_every = 250
    c.checkpoint_every = 250
    return dcgan_base.with_variant(c, variant)
