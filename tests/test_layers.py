"""Switchable GAN layers: upsampling, downsampling (with spectral norm) and normalisations,
checked against NumPy definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common_jax.errors import UserError
from gans_jax.layers import (
    DOWNSAMPLE,
    NORMS,
    UPSAMPLE,
    ConvTranspose4x4,
    Downsample,
    Upsample,
    depth_to_space,
    make_norm,
)

KEY = jax.random.PRNGKey(0)


def randn(*shape, seed=0):
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


def conv_same_np(x, w):
    """Stride-1 cross-correlation with zero padding (k - 1) // 2: out[h, w] += xp[h+i, w+j] @ k."""
    k = w.shape[0]
    pad = (k - 1) // 2
    b, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros((b, h, wd, w.shape[-1]))
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + h, j:j + wd] @ w[i, j]
    return out


def upsample(method, x, features=4, **kwargs):
    module = Upsample(features, method=method, **kwargs)
    params = module.init(KEY, jnp.asarray(x))["params"]
    return module, params


# ---------------------------------------------------------------------------------- Upsample


@pytest.mark.parametrize("method", UPSAMPLE)
def test_upsample_doubles_height_and_width(method):
    x = randn(2, 5, 6, 8)
    module, params = upsample(method, x)
    kernel_size = 4 if method == "transpose4" else 3
    channels = 16 if method == "pixel_shuffle" else 4
    assert jax.tree.map(jnp.shape, params) == {"kernel": (kernel_size, kernel_size, 8, channels)}
    assert module.apply({"params": params}, jnp.asarray(x)).shape == (2, 10, 12, 4)


def test_transpose4_is_conv_transpose_4x4_with_the_same_parameters():
    x = jnp.asarray(randn(2, 5, 6, 8))
    module, params = upsample("transpose4", x, impl="xla")
    reference = ConvTranspose4x4(4, impl="xla")
    assert jax.tree.map(jnp.shape, reference.init(KEY, x)["params"]) == jax.tree.map(
        jnp.shape, params)
    np.testing.assert_array_equal(module.apply({"params": params}, x),
                                  reference.apply({"params": params}, x))


def test_transpose3_matches_the_scatter_definition():
    x = randn(2, 5, 6, 3)
    w = randn(3, 3, 3, 4, seed=1)
    module, _ = upsample("transpose3", x)
    got = module.apply({"params": {"kernel": jnp.asarray(w)}}, jnp.asarray(x))
    b, h, wd, _ = x.shape
    out = np.zeros((b, 2 * h + 1, 2 * wd + 1, 4))  # index o + 1 for o = 2*i + k - 1
    for i in range(h):
        for j in range(wd):
            for kh in range(3):
                for kw in range(3):
                    out[:, 2 * i + kh, 2 * j + kw] += x[:, i, j] @ w[kh, kw]
    np.testing.assert_allclose(got, out[:, 1:2 * h + 1, 1:2 * wd + 1], atol=1e-4)


def bilinear_x2_np(x):
    """Half-pixel-centred bilinear x2 with clamped edges: 3/4 of the nearest input, 1/4 of the
    next one towards the output pixel."""
    for axis in (1, 2):
        n = x.shape[axis]
        idx = np.arange(n)
        here = np.take(x, idx, axis)
        before = np.take(x, np.maximum(idx - 1, 0), axis)
        after = np.take(x, np.minimum(idx + 1, n - 1), axis)
        pair = np.stack([0.75 * here + 0.25 * before, 0.75 * here + 0.25 * after], axis + 1)
        x = pair.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])
    return x


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_resize_convolution_is_resize_then_conv(method):
    x = randn(2, 5, 6, 3)
    w = randn(3, 3, 3, 4, seed=1)
    module, _ = upsample(method, x)
    got = module.apply({"params": {"kernel": jnp.asarray(w)}}, jnp.asarray(x))
    big = (x.repeat(2, 1).repeat(2, 2) if method == "nearest" else bilinear_x2_np(x))
    np.testing.assert_allclose(got, conv_same_np(big, w), atol=1e-4)


def test_depth_to_space_uses_pytorch_pixel_shuffle_order():
    x = randn(2, 3, 4, 12)
    expected = np.zeros((2, 6, 8, 3))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                expected[:, i::2, j::2, c] = x[..., c * 4 + i * 2 + j]
    np.testing.assert_array_equal(depth_to_space(jnp.asarray(x)), expected)


def test_pixel_shuffle_is_conv_then_depth_to_space_and_starts_without_checkerboard():
    x = randn(2, 5, 6, 3)
    module, params = upsample("pixel_shuffle", x)
    kernel = np.asarray(params["kernel"])
    # ICNR: the 4 sub-pixel channels of each output channel share one sub-kernel...
    np.testing.assert_array_equal(kernel, kernel[..., ::4].repeat(4, axis=-1))
    out = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
    # ...so each 2x2 output block is constant (all four phases equal).
    for a, b in [(0, 1), (1, 0), (1, 1)]:
        np.testing.assert_array_equal(out[:, a::2, b::2], out[:, 0::2, 0::2])
    w = randn(3, 3, 3, 16, seed=1)  # a trained-looking kernel: phases differ
    got = module.apply({"params": {"kernel": jnp.asarray(w)}}, jnp.asarray(x))
    np.testing.assert_allclose(got, depth_to_space(jnp.asarray(conv_same_np(x, w))), atol=1e-4)


# -------------------------------------------------------------------------------- Downsample


def downsample(x, features=5, train=False, **kwargs):
    module = Downsample(features, **kwargs)
    variables = module.init(KEY, jnp.asarray(x), train=train)
    return module, variables


@pytest.mark.parametrize("spectral_norm", [False, True])
@pytest.mark.parametrize("method", DOWNSAMPLE)
def test_downsample_halves_height_and_width(method, spectral_norm):
    x = randn(2, 8, 8, 3)
    module, variables = downsample(x, method=method, spectral_norm=spectral_norm)
    size = 4 if method == "strided" else 3
    assert variables["params"]["conv"]["kernel"].shape == (size, size, 3, 5)
    assert ("batch_stats" in variables) == spectral_norm
    assert module.apply(variables, jnp.asarray(x), train=False).shape == (2, 4, 4, 5)


def test_strided_is_a_stride_2_pad_1_convolution():
    x = jnp.asarray(randn(2, 8, 8, 3))
    module, variables = downsample(x, method="strided")
    expected = jax.lax.conv_general_dilated(x, variables["params"]["conv"]["kernel"], (2, 2),
                                            ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(module.apply(variables, x, train=False), expected, atol=1e-6)


def test_avg_pool_is_conv_then_2x2_mean():
    x = randn(2, 8, 8, 3)
    w = randn(3, 3, 3, 5, seed=1)
    module = Downsample(5, method="avg_pool")
    got = module.apply({"params": {"conv": {"kernel": jnp.asarray(w)}}}, jnp.asarray(x),
                       train=False)
    expected = conv_same_np(x, w).reshape(2, 4, 2, 4, 2, 5).mean(axis=(2, 4))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_spectral_norm_makes_the_largest_singular_value_one():
    x = jnp.asarray(randn(2, 8, 8, 3))
    module, variables = downsample(x, features=8, spectral_norm=True)
    # Scale the raw kernel far from unit norm (the layer's output does not depend on its scale).
    kernel = 5 * np.asarray(variables["params"]["conv"]["kernel"], np.float64)
    assert np.linalg.norm(kernel.reshape(-1, 8), 2) > 4
    variables["params"]["conv"]["kernel"] = jnp.asarray(kernel, jnp.float32)

    step = jax.jit(lambda v: module.apply(v, x, train=True, mutable=["batch_stats"])[1])
    for _ in range(20):  # each train-mode call advances the power iteration one step
        variables = {"params": variables["params"], **step(variables)}
    sigma = float(variables["batch_stats"]["SpectralNorm_0"]["conv/kernel/sigma"])
    np.testing.assert_allclose(np.linalg.norm(kernel.reshape(-1, 8) / sigma, 2), 1.0, rtol=0.05)
    # The layer computes with that normalised kernel.
    expected = jax.lax.conv_general_dilated(x, jnp.asarray(kernel / sigma, jnp.float32), (2, 2),
                                            ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(module.apply(variables, x, train=False), expected, rtol=1e-3,
                               atol=1e-5)


# --------------------------------------------------------------------------------- make_norm


def norm(kind, x, train, axis_name=None):
    module = make_norm(kind, train=train, axis_name=axis_name)(name="norm")
    variables = module.init(KEY, x)
    out, _ = module.apply(variables, x, mutable=["batch_stats"])
    return np.asarray(out), variables


def shifted(seed=0, shape=(4, 3, 3, 5)):
    """Data far from zero mean and unit variance, differently per channel."""
    return jnp.asarray(randn(*shape, seed=seed) * np.arange(1, 6) + np.arange(5) * 3)


def test_batch_norm_uses_batch_statistics_in_training():
    out, variables = norm("batch", shifted(), train=True)
    scale = np.asarray(variables["params"]["scale"])
    assert abs(scale.mean() - 1) < 0.05 and 0 < scale.std() < 0.05  # N(1, 0.02)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), scale, rtol=1e-3)


def test_batch_norm_uses_running_statistics_in_evaluation():
    x = shifted()
    out, variables = norm("batch", x, train=False)
    params = variables["params"]  # fresh running mean 0, variance 1
    expected = np.asarray(x) / np.sqrt(1 + 1e-5) * params["scale"] + params["bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_batch_norm_averages_statistics_over_the_device_axis():
    x = shifted()
    whole, variables = norm("batch", x, train=True)
    module = make_norm("batch", train=True, axis_name="devices")(name="norm")
    halves = jax.vmap(lambda x: module.apply(variables, x, mutable=["batch_stats"])[0],
                      axis_name="devices")(x.reshape(2, 2, 3, 3, 5))
    np.testing.assert_allclose(np.asarray(halves).reshape(whole.shape), whole, atol=1e-5)


def test_instance_norm_normalises_each_example_and_channel_alone():
    x = shifted()
    out, variables = norm("instance", x, train=True)
    assert jax.tree.map(jnp.shape, variables) == {"params": {"bias": (5,), "scale": (5,)}}
    np.testing.assert_allclose(out.mean(axis=(1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(1, 2)), 1, rtol=1e-3)
    other, _ = norm("instance", x.at[1:].set(shifted(seed=1)[1:]), train=True)
    np.testing.assert_array_equal(other[0], out[0])


def test_pixel_norm_gives_each_pixel_unit_mean_square():
    out, variables = norm("pixel", shifted(), train=True)
    assert not jax.tree.leaves(variables)
    np.testing.assert_allclose(np.mean(out**2, axis=-1), 1, rtol=1e-5)


def test_layer_norm_normalises_each_example_over_h_w_c():
    x = shifted()
    out, variables = norm("layer", x, train=True)
    assert jax.tree.map(jnp.shape, variables) == {"params": {"bias": (5,), "scale": (5,)}}
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(1, 2, 3)), 1, rtol=1e-3)
    other, _ = norm("layer", x.at[1:].set(shifted(seed=1)[1:]), train=True)
    np.testing.assert_array_equal(other[0], out[0])


def test_none_is_the_identity():
    x = shifted()
    out, variables = norm("none", x, train=True)
    assert not jax.tree.leaves(variables)
    np.testing.assert_array_equal(out, x)


def test_unknown_choices_are_refused_with_the_names():
    assert set(NORMS) == {"batch", "instance", "pixel", "layer", "none"}
    with pytest.raises(UserError, match="unknown normalisation 'group'; choose one of batch"):
        make_norm("group", train=True, axis_name=None)
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(UserError, match="unknown upsampling method 'cubic'.*pixel_shuffle"):
        Upsample(2, method="cubic").init(KEY, x)
    with pytest.raises(UserError, match="unknown downsampling method 'max_pool'.*avg_pool"):
        Downsample(2, method="max_pool").init(KEY, x, train=False)
