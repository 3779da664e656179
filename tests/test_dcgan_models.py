"""DCGAN networks and the upsampling layer: shapes, parameter counts, equivalent forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common_jax import onednn
from common_jax.conv import onednn_active
from common_jax.errors import UserError
from gans_jax.layers import conv_transpose_4x4, resolve_impl
from gans_jax.models.dcgan import Discriminator, Generator, geometry


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


def test_parameter_counts_equal_the_pytorch_reference_dcgan_at_64x64_rgb():
    g, d = Generator(64, 3, width=64), Discriminator(64, width=64)
    z = jnp.zeros((2, 100))
    g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, train=False))
    d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((2, 64, 64, 3)),
                                           train=False))
    assert count(g_vars["params"]) == 3_576_704
    assert count(d_vars["params"]) == 2_765_568


@pytest.mark.parametrize("size,channels", [(28, 1), (32, 3), (64, 3), (64, 1)])
def test_shapes_and_ranges(size, channels):
    g, d = Generator(size, channels, width=8), Discriminator(size, width=8)
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 100))
    g_vars = g.init(jax.random.PRNGKey(1), z, train=False)
    images = g.apply(g_vars, z, train=False)
    assert images.shape == (4, size, size, channels)
    assert float(jnp.abs(images).max()) <= 1.0
    d_vars = d.init(jax.random.PRNGKey(2), images, train=False)
    assert d.apply(d_vars, images, train=False).shape == (4,)


def test_bfloat16_compute_keeps_float32_params_and_close_outputs():
    from gans_jax.configs import dcgan_mnist
    from gans_jax.trainers.dcgan import make_models

    config = dcgan_mnist.get_config()
    config.model.g_width = config.model.d_width = 8
    z = jax.random.normal(jax.random.PRNGKey(0), (4, config.model.z_dim))
    out = {}
    for dtype in ("float32", "bfloat16"):
        config.model.dtype = dtype
        g, d = make_models(config)
        g_vars = g.init(jax.random.PRNGKey(1), z, train=False)
        images = g.apply(g_vars, z, train=False)
        d_vars = d.init(jax.random.PRNGKey(2), images, train=False)
        params = jax.tree.leaves((g_vars, d_vars))
        assert {x.dtype for x in params} == {jnp.dtype(jnp.float32)}, dtype
        out[dtype] = (images, d.apply(d_vars, images, train=False))
    for f32, bf16 in zip(out["float32"], out["bfloat16"], strict=True):
        assert bf16.dtype == jnp.float32
        error = float(jnp.abs(bf16 - f32).max())
        assert 0 < error < 0.05 * float(jnp.abs(f32).max())
    config.model.dtype = "float64"
    with pytest.raises(UserError, match="--config.model.dtype"):
        make_models(config)


def test_initial_weights_follow_n_0_002():
    g = Generator(64, 3, width=64)
    params = g.init(jax.random.PRNGKey(0), jnp.zeros((1, 100)), train=False)["params"]
    kernel = np.asarray(params["up0"]["kernel"])
    assert abs(kernel.mean()) < 1e-3 and abs(kernel.std() - 0.02) < 1e-3


@pytest.mark.parametrize("size", [30, 24 * 3, 20, 8])
def test_impossible_image_sizes_are_refused_with_a_fix(size):
    if size == 20:  # 20 = 5 * 4 is possible
        assert geometry(20) == (5, 2)
        return
    with pytest.raises(UserError, match="image_size"):
        geometry(size)


def reference_conv_transpose(x, w):
    """Scatter definition of PyTorch's ConvTranspose2d(k=4, s=2, p=1): out = 2*in + k - 1."""
    b, h, wd, _ = x.shape
    out = np.zeros((b, 2 * h + 2, 2 * wd + 2, w.shape[-1]))
    for i in range(h):
        for j in range(wd):
            for kh in range(4):
                for kw in range(4):
                    out[:, 2 * i + kh, 2 * j + kw] += x[:, i, j] @ w[kh, kw]
    return out[:, 1:2 * h + 1, 1:2 * wd + 1]


@pytest.mark.parametrize("impl", ["xla", "subpixel"])
def test_conv_transpose_forms_match_the_definition(impl):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 5, 6, 3).astype(np.float32)
    w = rng.randn(4, 4, 3, 4).astype(np.float32)
    got = conv_transpose_4x4(jnp.asarray(x), jnp.asarray(w), impl=impl)
    np.testing.assert_allclose(got, reference_conv_transpose(x, w), atol=1e-4)


def test_auto_form_is_the_direct_one_with_onednn_and_sub_pixel_on_xlas_cpu_kernels(monkeypatch):
    assert resolve_impl("subpixel") == "subpixel" and resolve_impl("xla") == "xla"
    assert resolve_impl("auto") == ("xla" if onednn_active() else "subpixel")
    monkeypatch.setenv(onednn.SWITCH_ENV, "0")  # XLA's CPU convolutions
    assert resolve_impl("auto") == "subpixel"


def test_conv_transpose_forms_have_equal_gradients():
    rng = np.random.RandomState(1)
    x = jnp.asarray(rng.randn(2, 4, 4, 8).astype(np.float32))
    w = jnp.asarray(rng.randn(4, 4, 8, 5).astype(np.float32))
    target = jnp.asarray(rng.randn(2, 8, 8, 5).astype(np.float32))

    def loss(x, w, impl):
        return jnp.sum((conv_transpose_4x4(x, w, impl=impl) - target) ** 2)

    gx_a, gw_a = jax.grad(loss, argnums=(0, 1))(x, w, "xla")
    gx_b, gw_b = jax.grad(loss, argnums=(0, 1))(x, w, "subpixel")
    np.testing.assert_allclose(gx_a, gx_b, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gw_a, gw_b, rtol=1e-4, atol=1e-3)
