"""A checkerboard meter: how much of an image's spectral energy sits at the stride-2 aliases.

Odena et al. (2016, "Deconvolution and Checkerboard Artifacts") show that a stride-2 upsampling
whose kernel size is not divisible by the stride (a transposed convolution with kernel 3, say)
lets the four output phases (even/odd row x even/odd column) differ systematically. In the
2-D spectrum such a periodic phase pattern is energy at the frequencies (pi, 0), (0, pi) and
(pi, pi) -- DFT indices (H/2, 0), (0, W/2), (H/2, W/2) -- plus copies of the image's own
low-frequency content shifted there (the upsampled signal's spectral images that the layer did
not filter out).

`aliasing_energy_fraction` measures, per image, the share of spectral energy (DC excluded) that
lies within `radius` of those three frequencies, where distances are in cycles per pixel in the
wrapped frequency plane (so `radius` is a fraction of the image size; the default 0.125 is H/8
DFT bins along rows and W/8 along columns). The image is reduced to gray by the channel mean and
its mean is removed first, so brightness and colour balance do not count.

The fraction is not zero for clean images: white noise puts 3 * pi * radius**2 (about 0.15 at
the default radius) of its energy there, and natural images, digits and sharp edges have their
own high-frequency energy near those points (about 0.01 on average for MNIST, CIFAR-10 and 64x64
anime faces; 5th-95th percentile 0.002-0.03 per image). A raw fraction therefore says little on
its own; `checkerboard_score` divides the generator's mean fraction by that of real images from
the same data, so ~1 means "as much energy at the aliases as the data has", >1 means artifacts
and <1 means smoother than the data. Scores are only comparable against the same real set: the
smaller its fraction (very smooth data), the larger the same artifact's score.

Everything runs in NumPy float64 on the host, so it works for arrays from any JAX backend.
"""

from __future__ import annotations

import functools

import numpy as np

# Guards the divisions: relative to an image's own energy (so the meter is scale-free) plus the
# smallest float so an all-zero image gives 0 / tiny = 0 rather than 0 / 0.
_RELATIVE_EPS = 1e-12
_TINY = np.finfo(np.float64).tiny


@functools.lru_cache(maxsize=32)
def aliasing_mask(height: int, width: int, radius: float) -> np.ndarray:
    """[H, W] bool, read-only: DFT bins within `radius` of (H/2, 0), (0, W/2) or (H/2, W/2)."""
    fy = np.fft.fftfreq(height)[:, None]  # cycles per pixel in [-0.5, 0.5)
    fx = np.fft.fftfreq(width)[None, :]
    mask = np.zeros((height, width), dtype=bool)
    for ty, tx in ((0.5, 0.0), (0.0, 0.5), (0.5, 0.5)):
        mask |= np.hypot(_wrapped(fy - ty), _wrapped(fx - tx)) <= radius
    mask[0, 0] = False  # DC is excluded from the total too (only matters for radius >= 0.5)
    mask.setflags(write=False)  # shared by every caller through the cache
    return mask


def _wrapped(delta: np.ndarray) -> np.ndarray:
    """Frequency differences folded into [-0.5, 0.5): the DFT plane is a torus."""
    return (delta + 0.5) % 1.0 - 0.5


def _gray(images) -> np.ndarray:
    """[N, H, W, C] -> [N, H, W] float64 channel means, after checking the shape."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C]; got shape {x.shape}")
    _, height, width, _ = x.shape
    if height < 2 or width < 2 or height % 2 or width % 2:
        raise ValueError(f"H and W must be even and >= 2 (stride-2 aliases sit at H/2 and W/2); "
                         f"got images of shape {x.shape}")
    return x.mean(axis=-1)


def aliasing_energy_fraction(images, *, radius: float = 0.125) -> np.ndarray:
    """images [N,H,W,C] (any range; converted to gray by the channel mean, per-image mean removed)
    -> [N] float64: the fraction of each image's spectral energy (DC excluded) that lies within
    `radius` (as a fraction of the image size, measured in the wrapped frequency plane) of the three
    stride-2 aliasing frequencies."""
    gray = _gray(images)
    n, height, width = gray.shape
    if n == 0:
        return np.zeros((0,), dtype=np.float64)
    centred = gray - gray.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    power[:, 0, 0] = 0.0  # DC: zero up to rounding after centring, but excluded by definition
    total = power.sum(axis=(1, 2))
    aliased = power[:, aliasing_mask(height, width, float(radius))].sum(axis=1)
    # Parseval: sum |F|^2 = H * W * sum x^2. Centring a constant image leaves only rounding noise
    # (~1e-32 of its uncentred energy), far below this guard, so its fraction comes out ~0.
    guard = _RELATIVE_EPS * height * width * (gray**2).sum(axis=(1, 2)) + _TINY
    return aliased / (total + guard)


def checkerboard_score(fake_images, real_images, *, radius: float = 0.125) -> float:
    """mean fraction on fake / mean fraction on real: ~1 when generated images have the real data's
    share of energy at those frequencies, >1 with checkerboard artifacts."""
    fake = aliasing_energy_fraction(fake_images, radius=radius)
    real = aliasing_energy_fraction(real_images, radius=radius)
    if fake.size == 0 or real.size == 0:
        raise ValueError(f"need at least one fake and one real image; got {fake.size} fake and "
                         f"{real.size} real")
    # The same tiny offset on both sides keeps two all-constant sets at 1 instead of 0 / 0.
    return float((fake.mean() + _RELATIVE_EPS) / (real.mean() + _RELATIVE_EPS))
