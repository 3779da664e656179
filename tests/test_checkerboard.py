"""The checkerboard meter separates the cases of Odena et al. (2016): synthetic patterns, and
stride-2 transposed convolutions vs resize + convolution at initialisation."""

import re
import warnings

import flax.linen as nn
import jax
import numpy as np
import pytest

from gans_jax.checkerboard import aliasing_energy_fraction, aliasing_mask, checkerboard_score

SIZE = 32


def grid(size=SIZE):
    return np.meshgrid(np.arange(size), np.arange(size), indexing="ij")


def checkerboard(size=SIZE):
    i, j = grid(size)
    return (-1.0) ** (i + j)


def stripes(size=SIZE):
    """Period-2 stripes along rows and along columns."""
    i, j = grid(size)
    return np.stack([(-1.0) ** i, (-1.0) ** j])


def smooth_images(n=4, size=SIZE, seed=0):
    """[3n, size, size]: Gaussian blobs, low-frequency sinusoids and blurred random fields."""
    rng = np.random.default_rng(seed)
    i, j = grid(size)
    blobs = [np.exp(-((i - cy) ** 2 + (j - cx) ** 2) / (2 * s**2))
             for cy, cx, s in rng.uniform([10, 10, 2], [22, 22, 5], (n, 3))]
    waves = [np.sin(2 * np.pi * (fy * i + fx * j) / size + phase)
             for fy, fx, phase in zip(rng.integers(0, 4, n), rng.integers(1, 4, n),
                                      rng.uniform(0, 2 * np.pi, n), strict=True)]
    # Periodic Gaussian blur (sigma 2 px) of white noise, done in the frequency domain.
    f = np.fft.fftfreq(size)
    blur = np.exp(-2 * (np.pi * 2.0) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    fields = np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, size, size))) * blur).real
    return np.concatenate([np.stack(blobs), np.stack(waves), fields])


def nhwc(gray):
    """[N, H, W] or [H, W] -> [N, H, W, 1]."""
    return np.asarray(gray).reshape(-1, *np.shape(gray)[-2:], 1)


# ---------------------------------------------------------------- synthetic patterns


def test_checkerboards_and_period_2_stripes_are_all_aliasing_energy():
    fractions = aliasing_energy_fraction(nhwc(np.concatenate([checkerboard()[None], stripes()])))
    np.testing.assert_allclose(fractions, 1.0, atol=1e-9)


def test_smooth_images_have_almost_none():
    fractions = aliasing_energy_fraction(nhwc(smooth_images()))
    assert fractions.shape == (12,) and fractions.dtype == np.float64
    assert fractions.max() < 0.05, fractions


def test_white_noise_spreads_its_energy_by_area():
    noise = np.random.default_rng(1).normal(size=(16, 64, 64, 1))
    area = aliasing_mask(64, 64, 0.125).mean()
    assert area == pytest.approx(3 * np.pi * 0.125**2, rel=0.05)
    assert aliasing_energy_fraction(noise).mean() == pytest.approx(area, abs=0.01)


def test_a_checkerboard_overlay_raises_the_fraction_monotonically():
    smooth = smooth_images(n=2)
    amplitudes = [0.0, 0.003, 0.01, 0.03, 0.1, 0.3]
    means = [aliasing_energy_fraction(nhwc(smooth + a * checkerboard())).mean()
             for a in amplitudes]
    assert np.all(np.diff(means) > 0), means
    assert means[0] < 0.05 and means[-1] > 0.5, means


def test_brightness_contrast_and_rgb_are_handled_by_gray_and_centring():
    images = nhwc(smooth_images(n=2) + 0.1 * checkerboard())
    base = aliasing_energy_fraction(images)
    np.testing.assert_allclose(aliasing_energy_fraction(255 * images + 40), base, rtol=1e-9)
    np.testing.assert_allclose(aliasing_energy_fraction(np.repeat(images, 3, axis=-1)), base,
                               rtol=1e-9)
    # Opposite checkerboards in red and green cancel in the channel mean: a flat gray image.
    cb = checkerboard()
    rgb = np.stack([0.5 + cb, 0.5 - cb, np.full_like(cb, 0.5)], axis=-1)[None]
    assert aliasing_energy_fraction(rgb)[0] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- upsampling layers at init


class Upsampler(nn.Module):
    """4x4 -> 32x32 in three stride-2 steps, ReLU between, one output channel (default init)."""

    kind: str  # "transposed" (kernel 3, stride 2) or "resize" (nearest x2, then a 3x3 conv)
    width: int = 32

    @nn.compact
    def __call__(self, x):
        for layer in range(3):
            features = 1 if layer == 2 else self.width
            if self.kind == "transposed":
                x = nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME")(x)
            else:
                b, h, w, c = x.shape
                x = jax.image.resize(x, (b, 2 * h, 2 * w, c), "nearest")
                x = nn.Conv(features, (3, 3), padding="SAME")(x)
            if layer < 2:
                x = nn.relu(x)
        return x


def initial_outputs(kind, z, nets=4):
    """Outputs of `nets` independently initialised networks on the same z, stacked."""
    model = Upsampler(kind)
    keys = jax.random.split(jax.random.PRNGKey(0), nets)
    params = jax.vmap(model.init, in_axes=(0, None))(keys, z)
    outputs = jax.vmap(model.apply, in_axes=(0, None))(params, z)  # [nets, B, 32, 32, 1]
    return np.asarray(outputs).reshape(-1, SIZE, SIZE, 1)


def test_transposed_conv_k3_s2_scores_far_above_resize_conv_at_init():
    # The same 4 random 4x4x32 inputs go through 4 random initialisations of each network, so
    # both means are over 16 images and the variation between weight draws is averaged out.
    z = jax.random.normal(jax.random.PRNGKey(1), (4, 4, 4, 32))
    transposed = initial_outputs("transposed", z)
    resized = initial_outputs("resize", z)
    assert transposed.shape == resized.shape == (16, SIZE, SIZE, 1)
    # Compared: mean aliasing fraction of the transposed-conv outputs over that of the
    # resize-conv outputs (the latter used as the reference "real" set). Here: 0.381 / 0.044 =
    # 8.7; over 20 other draws of inputs and weights, 6.2-13.6, with fractions 0.19-0.39
    # (transposed) and 0.029-0.049 (resize). Kernel 4 at init is not asserted lower: with random
    # weights its four phases differ as much as kernel 3's (k3/k4 ratio 0.63-1.93, median 0.97).
    assert checkerboard_score(transposed, resized) > 3.0
    assert aliasing_energy_fraction(transposed).mean() > 0.12
    assert aliasing_energy_fraction(resized).mean() < 0.08


# ---------------------------------------------------------------- scores, errors, edge cases


def test_score_of_a_set_against_itself_is_one_and_checkerboards_score_high():
    smooth = nhwc(smooth_images())
    assert checkerboard_score(smooth, smooth) == 1.0
    assert checkerboard_score(nhwc(smooth_images() + 0.3 * checkerboard()), smooth) > 10


def test_constant_zero_and_empty_images_do_not_divide_by_zero():
    constant = np.full((3, 8, 8, 3), 0.7)
    zeros = np.zeros((2, 8, 8, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0 / 0 would warn
        np.testing.assert_allclose(aliasing_energy_fraction(constant), 0.0, atol=1e-12)
        np.testing.assert_array_equal(aliasing_energy_fraction(zeros), 0.0)
        assert checkerboard_score(constant, zeros) == 1.0
        assert aliasing_energy_fraction(np.zeros((0, 8, 8, 1))).shape == (0,)
    with pytest.raises(ValueError, match="at least one"):
        checkerboard_score(np.zeros((0, 8, 8, 1)), constant)


@pytest.mark.parametrize("shape", [(2, 31, 32, 1), (2, 32, 7, 3), (2, 1, 8, 1), (32, 32, 1)])
def test_bad_shapes_raise_naming_the_shape(shape):
    with pytest.raises(ValueError, match=re.escape(f"shape {shape}")):
        aliasing_energy_fraction(np.zeros(shape))


def test_mask_is_cached_read_only_symmetric_and_covers_the_aliases():
    mask = aliasing_mask(16, 24, 0.125)
    assert mask is aliasing_mask(16, 24, 0.125)
    assert not mask.flags.writeable
    assert mask[8, 0] and mask[0, 12] and mask[8, 12] and not mask[0, 0]
    # A real image's spectrum is Hermitian, so the mask must be symmetric under f -> -f.
    np.testing.assert_array_equal(mask, np.roll(mask[::-1, ::-1], (1, 1), axis=(0, 1)))
    # radius 1/8 of the size: 2 bins of 16 along rows, 3 bins of 24 along columns.
    assert mask[10, 0] and not mask[11, 0] and mask[0, 15] and not mask[0, 16]
