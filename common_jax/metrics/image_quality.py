"""Full-reference image quality per image: MSE, PSNR and SSIM, optionally inside a region.

For reconstructions scored against their originals (an inpainter, a face-mask remover, an
autoencoder). Images come as batches, [N, H, W] or [N, H, W, C], in any numeric dtype; every
function returns one float64 value per image. Computed on the host in float64 with NumPy and
SciPy: the SSIM map subtracts nearly equal local moments, which float32 would round visibly on
flat patches.

- `mse`: mean squared error over every pixel and channel (or over the region's pixels).
- `psnr`: 10 log10(data_range^2 / MSE) in dB; +inf for identical images.
- `ssim`: the SSIM of Wang et al. (2004) with its standard settings: an 11x11 Gaussian window
  of sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample) moments, the map kept only where
  the whole window lies inside the image (scikit-image's `structural_similarity` with
  ``gaussian_weights=True, use_sample_covariance=False``); colour images average their
  channels' maps.

A region is a boolean [H, W] or [N, H, W] array (True inside). MSE and PSNR then use only the
region's pixels; SSIM averages its map over the window centres inside the region, so region
pixels closer than 5 pixels to the image border, where no whole window fits, do not count. An
empty region gives NaN.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

SSIM_WINDOW = 11  # taps of the Gaussian window, per axis
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_batch(images, name: str) -> np.ndarray:
    """[N, H, W] or [N, H, W, C] -> float64 [N, H, W, C]."""
    x = np.asarray(images, np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch [N, H, W] or [N, H, W, C]; got {x.shape}")
    return x


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_batch(a, "a"), _as_batch(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"the images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _region_weights(region, shape: tuple[int, ...]) -> np.ndarray:
    """A boolean region [H, W] or [N, H, W] -> float64 weights [N, H, W]."""
    r = np.asarray(region)
    if r.dtype != np.bool_:
        raise ValueError(f"the region must be boolean; got dtype {r.dtype}")
    try:
        return np.broadcast_to(r, shape[:3]).astype(np.float64)
    except ValueError:
        raise ValueError(f"a region of shape {r.shape} does not fit images {shape}") from None


def _weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Per-image mean of [N, H, W] values, weighted (NaN for an empty region)."""
    if weights is None:
        return values.mean(axis=(1, 2))
    total = weights.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0: an empty region is NaN
        return (values * weights).sum(axis=(1, 2)) / total


def _check_range(data_range: float) -> float:
    if not data_range > 0:
        raise ValueError(f"data_range must be positive (e.g. 1.0 or 255); got {data_range}")
    return float(data_range)


def mse(a, b, *, region=None) -> np.ndarray:
    """Mean squared error per image [N] (over the region's pixels, all channels, if given)."""
    a, b = _pair(a, b)
    squared = ((a - b) ** 2).mean(axis=-1)
    weights = None if region is None else _region_weights(region, a.shape)
    return _weighted_mean(squared, weights)


def psnr(a, b, *, data_range: float, region=None) -> np.ndarray:
    """Peak signal-to-noise ratio in dB per image [N]; +inf where the images are identical."""
    data_range = _check_range(data_range)
    error = mse(a, b, region=region)
    with np.errstate(divide="ignore"):  # zero error: an infinite PSNR, reported as such
        return 10.0 * np.log10(data_range**2 / error)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian taps; SSIM's 2-D window is their outer product."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2
    taps = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def _local_mean(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """The Gaussian-weighted mean around each pixel where the whole window fits:
    [N, H, W, C] -> [N, H - size + 1, W - size + 1, C]."""
    for axis in (1, 2):
        x = scipy.ndimage.correlate1d(x, taps, axis=axis, mode="constant")
    pad = (len(taps) - 1) // 2
    return x[:, pad:x.shape[1] - pad, pad:x.shape[2] - pad]


def ssim_map(a, b, *, data_range: float) -> np.ndarray:
    """The SSIM map [N, H - 10, W - 10] (window centres; channels averaged)."""
    a, b = _pair(a, b)
    data_range = _check_range(data_range)
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels; "
                         f"got {a.shape[1]}x{a.shape[2]}")
    taps = gaussian_window()
    mu_a, mu_b = _local_mean(a, taps), _local_mean(b, taps)
    var_a = _local_mean(a * a, taps) - mu_a**2
    var_b = _local_mean(b * b, taps) - mu_b**2
    cov = _local_mean(a * b, taps) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    numerator = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    denominator = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (numerator / denominator).mean(axis=-1)


def ssim(a, b, *, data_range: float, region=None) -> np.ndarray:
    """Mean SSIM per image [N], over the whole map or its window centres inside the region."""
    values = ssim_map(a, b, data_range=data_range)
    if region is None:
        return _weighted_mean(values, None)
    pad = (SSIM_WINDOW - 1) // 2
    shape = np.shape(np.asarray(a))
    weights = _region_weights(region, shape if len(shape) == 4 else (*shape, 1))
    inside = weights[:, pad:shape[1] - pad, pad:shape[2] - pad]
    return _weighted_mean(values, inside)
