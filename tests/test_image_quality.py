"""Tests of common_jax.metrics.image_quality: MSE, PSNR and SSIM against direct references."""

from __future__ import annotations

import numpy as np
import pytest

from common_jax.metrics import image_quality as iq


def noisy_pairs(n: int = 3, size: int = 24, channels: int = 3, seed: int = 0):
    """Smooth images in [0, 1] and noisy copies of them (SSIM well inside (0, 1))."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.5 + 0.4 * np.sin(6 * x + k) * np.cos(4 * y - k)
                     for k in range(n * channels)]).reshape(n, channels, size, size)
    clean = np.clip(base.transpose(0, 2, 3, 1), 0, 1)
    noisy = np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1)
    return clean, noisy


def reference_ssim_map(a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """SSIM of one gray image pair at every window centre, one explicit 11x11 window at a time."""
    g = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    h, w = a.shape
    out = np.empty((h - 10, w - 10))
    for i in range(h - 10):
        for j in range(w - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (window * pa).sum(), (window * pb).sum()
            va = (window * (pa - ma) ** 2).sum()
            vb = (window * (pb - mb) ** 2).sum()
            cov = (window * (pa - ma) * (pb - mb)).sum()
            out[i, j] = ((2 * ma * mb + c1) * (2 * cov + c2)
                         / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return out


def test_ssim_equals_the_windowed_definition_per_channel():
    clean, noisy = noisy_pairs(n=2, size=20)
    got = iq.ssim(clean, noisy, data_range=1.0)
    for i in range(2):
        maps = [reference_ssim_map(clean[i, ..., c], noisy[i, ..., c], 1.0) for c in range(3)]
        assert got[i] == pytest.approx(np.mean(maps), abs=1e-12)
    assert 0.3 < got.min() and got.max() < 0.95


def test_ssim_and_psnr_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    clean, noisy = noisy_pairs(n=2, size=32)
    for scale in (1.0, 255.0):
        a, b = clean * scale, noisy * scale
        for i in range(2):
            expected = metrics.structural_similarity(
                a[i], b[i], data_range=scale, channel_axis=-1, gaussian_weights=True,
                sigma=1.5, use_sample_covariance=False)
            assert iq.ssim(a, b, data_range=scale)[i] == pytest.approx(expected, abs=1e-10)
            expected_psnr = metrics.peak_signal_noise_ratio(a[i], b[i], data_range=scale)
            assert iq.psnr(a, b, data_range=scale)[i] == pytest.approx(expected_psnr, abs=1e-9)
    gray = metrics.structural_similarity(clean[0, ..., 0], noisy[0, ..., 0], data_range=1.0,
                                         gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
    assert iq.ssim(clean[:1, ..., 0], noisy[:1, ..., 0], data_range=1.0)[0] == pytest.approx(
        gray, abs=1e-10)


def test_mse_and_psnr_by_hand_and_identical_images():
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16  # one pixel of 16 levels: MSE 256 / 16 = 16
    np.testing.assert_allclose(iq.mse(a, b), [16.0, 0.0])
    result = iq.psnr(a, b, data_range=255)
    assert result[0] == pytest.approx(10 * np.log10(255**2 / 16.0))
    assert result[1] == np.inf  # identical: infinite, not an error or NaN
    assert iq.ssim(np.ones((1, 12, 12)), np.ones((1, 12, 12)), data_range=1.0)[0] == 1.0


def test_region_restricts_the_pixels_and_the_ssim_map():
    clean, noisy = noisy_pairs(n=2, size=24)
    region = np.zeros((24, 24), bool)
    region[10:20, 4:16] = True
    inside = (clean[:, 10:20, 4:16] - noisy[:, 10:20, 4:16]) ** 2
    np.testing.assert_allclose(iq.mse(clean, noisy, region=region),
                               inside.mean(axis=(1, 2, 3)))
    np.testing.assert_allclose(iq.psnr(clean, noisy, data_range=1.0, region=region),
                               10 * np.log10(1 / inside.mean(axis=(1, 2, 3))))
    # SSIM: the map at window centres inside the region (rows 10-18, columns 5-15 of the image).
    full_map = iq.ssim_map(clean, noisy, data_range=1.0)
    np.testing.assert_allclose(iq.ssim(clean, noisy, data_range=1.0, region=region),
                               full_map[:, 5:14, 0:11].mean(axis=(1, 2)))
    everywhere = np.ones((2, 24, 24), bool)
    np.testing.assert_allclose(iq.ssim(clean, noisy, data_range=1.0, region=everywhere),
                               iq.ssim(clean, noisy, data_range=1.0))


def test_region_per_image_and_empty_region():
    clean, noisy = noisy_pairs(n=2, size=16, channels=1)
    region = np.zeros((2, 16, 16), bool)
    region[0, :8] = True  # image 1: empty
    result = iq.mse(clean, noisy, region=region)
    assert np.isfinite(result[0]) and np.isnan(result[1])
    assert np.isnan(iq.ssim(clean, noisy, data_range=1.0, region=region)[1])


@pytest.mark.parametrize("call, message", [
    (lambda: iq.mse(np.zeros((2, 4, 4)), np.zeros((2, 4, 5))), "differ in shape"),
    (lambda: iq.mse(np.zeros((4, 4)), np.zeros((4, 4))), "must be a batch"),
    (lambda: iq.psnr(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), data_range=0), "data_range"),
    (lambda: iq.ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), data_range=1), "at least 11x11"),
    (lambda: iq.mse(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), region=np.ones((4, 4))),
     "boolean"),
    (lambda: iq.mse(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), region=np.ones((3, 4), bool)),
     "does not fit"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()
