"""The paper DCGAN (Radford et al. 2015; this toolkit's default network) on CIFAR-10 32x32.

    python train.py --config gans_jax/configs/dcgan_cifar10_paper.py --workdir runs/cifar10_paper
Data, batch, schedule and scores as `dcgan_cifar10.py` (the JPEG copy in ../shared/data, flips,
batch 64, Inception FID/KID of the raw generator against the 10,000 test images), so the two
networks compare at equal steps. Network: `model.architecture = "dcgan"` at 32x32 RGB, ngf =
ndf = 64, z of 100 dimensions: G projects to 4x4x256 and doubles three times with transposed
convolutions, batch norm and ReLU; D has three strided 4x4 convolutions with batch norm (not on
the first) and LeakyReLU 0.2; non-saturating loss, Adam 2e-4 (0.5, 0.999).
Variants: `:smoke` runs a few steps in seconds.
Results: not measured yet (docs/dcgan.md).
"""

from gans_jax.configs import dcgan_cifar10


def get_config(variant: str | None = None):
    c = dcgan_cifar10.cifar10_base()
    c.model.architecture = "dcgan"  # the base config's paper choices otherwise
    return dcgan_cifar10.with_variants(c, variant, {"smoke": dcgan_cifar10.smoke})
