"""Convolutional autoencoder on CIFAR-10 32x32 RGB.

    python train.py --config autoencoders_jax/configs/cifar10.py --workdir runs/ae_cifar10 \
        --config.model.latent_size=256
Reads ../shared/data/cifar10-jpg.tar.gz (train/<class>/*.jpg, test/<class>/*.jpg, JPEG quality
about 75) when present, else TFDS `cifar10`. Variants: `:map` (a latent map), `:smoke`.
Model: stages of 32/64/128 channels (32 -> 16 -> 8 -> 4), GELU, no normalisation, a 4x4
latent map of latent_size values (latent_size / 16 channels; `--config.model.latent_kind=vector`
for a dense bottleneck); transposed-conv decoder, tanh. MSE, Adam peaking at 3e-3 with a
one-cycle schedule, batch 128, horizontal flips, 6 epochs. Test PSNR (docs/autoencoder.md):
21.73 / 24.04 / 24.37 / 25.16 dB at latent_size 64 / 128 / 256 / 384; with
--config.model.widths='(32,64)' (an 8x8 latent map) 26.60 / 27.35 dB at 256 / 384.
"""

from autoencoders_jax.configs import base

LOCAL_CIFAR10 = base.SHARED_DATA / "cifar10-jpg.tar.gz"
TRAIN_EXAMPLES = 50_000
EPOCHS = 6


def get_config(variant: str | None = None):
    c = base.get_base_config()
    c.data.path = str(LOCAL_CIFAR10) if LOCAL_CIFAR10.exists() else ""
    c.data.tfds_name = "cifar10"
    c.model.image_size = 32
    c.model.channels = 3
    c.model.widths = (32, 64, 128)
    c.model.latent_kind = "map"
    c.optimizer.lr = 3e-3
    c.batch_size = 128
    c.eval_batch_size = 1000  # a multiple of 1, 2, 4 and 8 devices
    c.num_steps = base.steps_for(EPOCHS, TRAIN_EXAMPLES, c.batch_size)
    c.eval_every = 0
    c.sample_every = 1000
    c.checkpoint_every = 1000
    return base.with_variant(c, variant)
