"""DCGAN on CIFAR-10 32x32, the network and protocol the published CIFAR-10 DCGAN FIDs use.

    python train.py --config gans_jax/configs/dcgan_cifar10.py --workdir runs/dcgan_cifar10
    python -m gans_jax.fid_curve runs/dcgan_cifar10 --out docs/dcgan_cifar10_fid.png
Reads ../shared/data/cifar10-jpg.tar.gz (the JPEG copy, extracted once to a cache folder) when
present, else TFDS `cifar10`; trains on the 50,000 training images with random left-right
flips and scores against the 10,000 test images.

Network: `model.architecture = "sngan_dcgan"`, the spectral normalisation paper's 32x32 CNN as
PyTorch-StudioGAN's `deep_conv.py` builds it (G 3,811,907 and D 2,929,601 parameters here);
trained as StudioGAN's CIFAR-10 DCGAN config trains it: batch norm and ReLU in both networks,
the non-saturating loss, Adam 2e-4 (0.5, 0.999), batch 64, z ~ N(0, I) of 128 dimensions.
docs/dcgan.md ("DCGAN on CIFAR-10") lists the sources and every difference.
Scores: Inception FID and KID of the raw generator (what both libraries score) and of an EMA of
its weights (decay 0.999) every `metrics.every` steps on 2,000 samples, and at the end on
10,000, against 10,000 test images.

Variants (combine with '+', e.g. `:hinge_sn+smoke`):
  smoke      a few steps of a tiny network in seconds, no Inception scores;
  studiogan  StudioGAN's 2 D updates per G update (`n_critic = 2`); 400,000 steps here are its
             200,000 (each of its steps is 2 D updates and 1 G update; ours is 1 D update);
  hinge_sn   the toolkit's best variant on the MNIST ablation: hinge loss and spectral norm on
             every D layer, no norm in D, LeakyReLU 0.1 (the paper's slope); same steps.
Results (docs/dcgan.md): after 4,000 steps FID 53.66 (EMA) and 59.38 (raw), 10k samples vs the
test split; :hinge_sn 66.31.
"""

from pathlib import Path

import ml_collections

from common_jax.errors import UserError
from gans_jax.configs import dcgan_base

LOCAL_CIFAR10 = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
                 / "cifar10-jpg.tar.gz")


def cifar10_base() -> ml_collections.ConfigDict:
    """Data, scoring and schedule every CIFAR-10 GAN config shares; the network is the caller's."""
    c = dcgan_base.get_base_config()
    c.data.path = str(LOCAL_CIFAR10.resolve()) if LOCAL_CIFAR10.exists() else ""
    c.data.tfds_name = "cifar10"
    c.data.augment = "flip"  # StudioGAN's random left-right flip of the training images
    c.model.image_size = 32
    c.model.channels = 3
    c.batch_size = 64  # Mimicry's and StudioGAN's CIFAR-10 batch
    c.num_steps = 100_000
    # Mimicry and StudioGAN score the generator itself; with a weight average the trainer
    # scores both, the EMA generator (also behind every sample grid) and the raw one.
    c.ema_decay = 0.999
    c.log_every = 100
    c.sample_every = 2500
    c.checkpoint_every = 2500
    m = c.metrics
    m.inception = True  # needs `make fid-weights`
    m.every = 5000  # steps between scores on periodic_num_samples samples
    m.num_samples = 10_000  # at the end: 10k samples vs 10k test images (Mimicry's n for DCGAN)
    m.periodic_num_samples = 2_000  # cheaper; biased higher than a 10k score (docs/dcgan.md)
    m.reference_split = "test"
    return c


def get_config(variant: str | None = None):
    c = cifar10_base()
    m = c.model
    m.architecture = "sngan_dcgan"
    m.z_dim = 128
    m.g_width = 64  # G: 512 -> 256 -> 128 -> 64 channels
    m.d_width = 64  # D: 64, 64, 128, 128, 256, 256, 512 channels
    m.g_norm = "batch"
    m.d_norm = "batch"  # StudioGAN's DCGAN normalises every D layer
    m.g_activation = "relu"
    m.d_activation = "relu"  # StudioGAN's DCGAN config: ReLU in D too
    m.d_slope = 0.1  # the paper's LeakyReLU slope, used when d_activation is leaky_relu
    return with_variants(c, variant, VARIANTS)


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A run of seconds: the shared DCGAN smoke settings, no Inception scores."""
    c = dcgan_base.smoke(c)
    c.metrics.inception = False
    return c


def studiogan(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """StudioGAN's CIFAR-10 DCGAN schedule: 2 D updates per G update, 200,000 G updates."""
    c.n_critic = 2
    c.num_steps = 400_000
    return c


def hinge_sn(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Hinge loss, spectral norm on every D layer instead of batch norm, LeakyReLU 0.1."""
    c.loss.kind = "hinge"
    c.model.d_spectral_norm = True
    c.model.d_norm = "none"
    c.model.d_activation = "leaky_relu"
    c.model.d_slope = 0.1
    return c


VARIANTS = {"smoke": smoke, "studiogan": studiogan, "hinge_sn": hinge_sn}


def with_variants(c: ml_collections.ConfigDict, variant: str | None,
                  variants: dict) -> ml_collections.ConfigDict:
    """Applies "+"-separated variant names in the order given. Smoke goes last whatever its
    place, so that it shrinks what the others set.

    An unknown name is a UserError, which train.py prints as one line while parsing --config.
    """
    names = [name for name in (variant or "").split("+") if name]
    for name in names:
        if name not in variants:
            raise UserError(f"unknown config variant '{name}'; this config has: "
                            f"{', '.join(variants)}; put them after the ':' in --config, "
                            "combined with '+' (e.g. dcgan_cifar10.py:hinge_sn+smoke), or leave "
                            "it out")
    for name in sorted(names, key=lambda name: name == "smoke"):
        c = variants[name](c)
    return c
