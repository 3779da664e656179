"""Tests of gans_jax.losses against independent float64 NumPy references.

The logits include large magnitudes (±20, ±50) where naive log(sigmoid) formulas overflow, so
every comparison also checks numerical stability.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gans_jax import losses

B = 16
RTOL, ATOL = 1e-5, 1e-6


def make_logits(seed: int) -> np.ndarray:
    """[B] float32 logits: moderate random values plus extremes at both ends."""
    rng = np.random.default_rng(seed)
    moderate = rng.normal(scale=3.0, size=B - 4)
    return np.concatenate([moderate, [50.0, -50.0, 20.0, -20.0]]).astype(np.float32)


REAL, FAKE = make_logits(0), make_logits(1)


# Float64 references. log(sigmoid(x)) = -log(1 + exp(-x)); np.logaddexp keeps it finite.
def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_sigmoid(x):
    return np.exp(np_log_sigmoid(x))


def np_bce(logits, target):
    """Mean of -[t log p + (1 - t) log(1 - p)] with p = sigmoid(logits)."""
    return np.mean(-(target * np_log_sigmoid(logits) + (1 - target) * np_log_sigmoid(-logits)))


def np_relu(x):
    return np.maximum(np.asarray(x, np.float64), 0.0)


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    actual = np.asarray(actual)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def assert_f32_scalar(x):
    assert x.shape == () and x.dtype == jnp.float32, (x.shape, x.dtype)


# References of every loss, in the dispatch's terms.
def np_d_loss(kind, real, fake, real_label=1.0):
    real, fake = np.float64(real), np.float64(fake)
    if kind in ("minimax", "non_saturating"):
        return np_bce(real, real_label) + np_bce(fake, 0.0)
    if kind == "lsgan":
        return 0.5 * np.mean((real - real_label) ** 2) + 0.5 * np.mean(fake**2)
    if kind == "wasserstein":
        return np.mean(fake) - np.mean(real)
    assert kind == "hinge"
    return np.mean(np_relu(1 - real)) + np.mean(np_relu(1 + fake))


def np_g_loss(kind, fake):
    fake = np.float64(fake)
    return {
        "minimax": np.mean(np_log_sigmoid(-fake)),  # log(1 - sigmoid(x)) = log sigmoid(-x)
        "non_saturating": np_bce(fake, 1.0),
        "lsgan": 0.5 * np.mean((fake - 1) ** 2),
        "wasserstein": -np.mean(fake),
        "hinge": -np.mean(fake),
    }[kind]


class TestMinimax:
    @pytest.mark.parametrize("real_label", [1.0, 0.9])
    def test_discriminator_matches_reference(self, real_label):
        fn = jax.jit(functools.partial(losses.minimax_discriminator_loss, real_label=real_label))
        out = fn(real_logits=REAL, fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, np_bce(REAL, real_label) + np_bce(FAKE, 0.0))

    def test_generator_matches_reference(self):
        out = jax.jit(losses.minimax_generator_loss)(fake_logits=FAKE)
        assert_f32_scalar(out)
        # mean(log(1 - p)) written with np.log / np.exp on moderate logits, stable form overall.
        moderate = FAKE[:-4].astype(np.float64)
        naive = np.log(1 - 1 / (1 + np.exp(-moderate)))
        assert_close(losses.minimax_generator_loss(fake_logits=FAKE[:-4]), naive.mean())
        assert_close(out, np.mean(np_log_sigmoid(-FAKE)))

    def test_extremes_are_finite_and_exact(self):
        # D certain and right: loss ~ 2 * log(1 + e^-50) ~ 4e-22; G's saturating loss ~ -50.
        d = jax.jit(losses.minimax_discriminator_loss)(real_logits=jnp.array([50.0]),
                                                       fake_logits=jnp.array([-50.0]))
        assert_close(d, 0.0, atol=1e-20)
        g = jax.jit(jax.vmap(lambda f: losses.minimax_generator_loss(fake_logits=f[None])))
        assert_close(g(jnp.array([50.0, -50.0])), [-50.0, 0.0])

    def test_smoothing_changes_only_the_real_term(self):
        @jax.jit
        def shift(fake):
            smooth = losses.minimax_discriminator_loss(real_logits=REAL, fake_logits=fake,
                                                       real_label=0.9)
            plain = losses.minimax_discriminator_loss(real_logits=REAL, fake_logits=fake)
            return smooth - plain

        expected = np_bce(REAL, 0.9) - np_bce(REAL, 1.0)
        assert_close(shift(FAKE), expected)
        assert_close(shift(-3 * FAKE), expected)  # whatever the fakes


class TestNonSaturating:
    def test_discriminator_is_the_minimax_one(self):
        assert losses.non_saturating_discriminator_loss is losses.minimax_discriminator_loss

    def test_generator_matches_reference(self):
        out = jax.jit(losses.non_saturating_generator_loss)(fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, -np.mean(np_log_sigmoid(FAKE)))

    def test_extremes_are_finite_and_exact(self):
        out = jax.jit(losses.non_saturating_generator_loss)(fake_logits=jnp.array([-50.0, 50.0]))
        assert_close(out, 25.0)  # (softplus(50) + softplus(-50)) / 2


class TestLsgan:
    @pytest.mark.parametrize("real_label", [1.0, 0.9])
    def test_discriminator_matches_reference(self, real_label):
        fn = jax.jit(functools.partial(losses.lsgan_discriminator_loss, real_label=real_label))
        out = fn(real_logits=REAL, fake_logits=FAKE)
        assert_f32_scalar(out)
        real, fake = np.float64(REAL), np.float64(FAKE)
        assert_close(out, 0.5 * np.mean((real - real_label) ** 2) + 0.5 * np.mean(fake**2))

    def test_generator_matches_reference(self):
        out = jax.jit(losses.lsgan_generator_loss)(fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, 0.5 * np.mean((np.float64(FAKE) - 1) ** 2))

    def test_smoothing_changes_only_the_real_term(self):
        @jax.jit
        def shift(fake):
            return (losses.lsgan_discriminator_loss(real_logits=REAL, fake_logits=fake,
                                                    real_label=0.9)
                    - losses.lsgan_discriminator_loss(real_logits=REAL, fake_logits=fake))

        real = np.float64(REAL)
        expected = 0.5 * np.mean((real - 0.9) ** 2) - 0.5 * np.mean((real - 1.0) ** 2)
        assert_close(shift(FAKE), expected, atol=1e-4)  # a difference of values ~ 500
        assert_close(shift(0.5 * FAKE), expected, atol=1e-4)


class TestWasserstein:
    def test_discriminator_matches_reference(self):
        out = jax.jit(losses.wasserstein_discriminator_loss)(real_logits=REAL, fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, np.mean(np.float64(FAKE)) - np.mean(np.float64(REAL)))

    def test_generator_matches_reference(self):
        out = jax.jit(losses.wasserstein_generator_loss)(fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, -np.mean(np.float64(FAKE)))


class TestHinge:
    def test_discriminator_matches_reference(self):
        out = jax.jit(losses.hinge_discriminator_loss)(real_logits=REAL, fake_logits=FAKE)
        assert_f32_scalar(out)
        expected = np.mean(np_relu(1 - np.float64(REAL))) + np.mean(np_relu(1 + np.float64(FAKE)))
        assert_close(out, expected)

    def test_margins(self):
        # Beyond the margins (real >= 1, fake <= -1) D's loss is exactly 0.
        out = losses.hinge_discriminator_loss(real_logits=jnp.array([1.0, 50.0]),
                                              fake_logits=jnp.array([-1.0, -50.0]))
        assert float(out) == 0.0

    def test_generator_matches_reference(self):
        out = jax.jit(losses.hinge_generator_loss)(fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, -np.mean(np.float64(FAKE)))


class TestDispatch:
    def test_losses_tuple(self):
        assert losses.LOSSES == ("minimax", "non_saturating", "lsgan", "wasserstein", "hinge")

    @pytest.mark.parametrize("kind", losses.LOSSES)
    def test_discriminator_loss(self, kind):
        out = jax.jit(functools.partial(losses.discriminator_loss, kind))(
            real_logits=REAL, fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, np_d_loss(kind, REAL, FAKE))

    @pytest.mark.parametrize("kind", ["minimax", "non_saturating", "lsgan"])
    def test_discriminator_loss_smoothed(self, kind):
        out = losses.discriminator_loss(kind, real_logits=REAL, fake_logits=FAKE, real_label=0.9)
        assert_close(out, np_d_loss(kind, REAL, FAKE, real_label=0.9))

    @pytest.mark.parametrize("kind", losses.LOSSES)
    def test_generator_loss(self, kind):
        out = jax.jit(functools.partial(losses.generator_loss, kind))(fake_logits=FAKE)
        assert_f32_scalar(out)
        assert_close(out, np_g_loss(kind, FAKE))

    def test_unknown_kind_lists_the_losses(self):
        for call in (lambda: losses.discriminator_loss("wgan", real_logits=REAL,
                                                       fake_logits=FAKE),
                     lambda: losses.generator_loss("wgan", fake_logits=FAKE)):
            with pytest.raises(ValueError, match="wgan") as info:
                call()
            assert all(kind in str(info.value) for kind in losses.LOSSES)

    @pytest.mark.parametrize("kind", ["wasserstein", "hinge"])
    def test_smoothing_rejected_without_a_target(self, kind):
        with pytest.raises(ValueError, match=f"real_label=0.9.*{kind}"):
            losses.discriminator_loss(kind, real_logits=REAL, fake_logits=FAKE, real_label=0.9)
        # The default is fine.
        losses.discriminator_loss(kind, real_logits=REAL, fake_logits=FAKE, real_label=1.0)

    @pytest.mark.parametrize("real_label", [0.0, -0.1, 1.1])
    def test_real_label_out_of_range(self, real_label):
        with pytest.raises(ValueError, match="real_label must be in"):
            losses.discriminator_loss("lsgan", real_logits=REAL, fake_logits=FAKE,
                                      real_label=real_label)

    @pytest.mark.parametrize("kind", losses.LOSSES)
    def test_shape_mismatch_names_both_shapes(self, kind):
        with pytest.raises(ValueError, match=r"\(16,\).*\(16, 1\)"):
            losses.discriminator_loss(kind, real_logits=REAL, fake_logits=FAKE[:, None])

    @pytest.mark.parametrize("kind", losses.LOSSES)
    def test_bfloat16_logits_give_float32(self, kind):
        real, fake = jnp.asarray(REAL, jnp.bfloat16), jnp.asarray(FAKE, jnp.bfloat16)
        d = losses.discriminator_loss(kind, real_logits=real, fake_logits=fake)
        g = losses.generator_loss(kind, fake_logits=fake)
        assert_f32_scalar(d)
        assert_f32_scalar(g)
        # Rounding to bfloat16 happens before the loss; the loss itself is exact in float32.
        real64, fake64 = np.float64(real.astype(jnp.float32)), np.float64(fake.astype(jnp.float32))
        assert_close(d, np_d_loss(kind, real64, fake64))
        assert_close(g, np_g_loss(kind, fake64))


# Analytic derivatives of the losses w.r.t. each logit (the mean contributes 1/B).
def np_d_grads(kind, real, fake):
    real, fake = np.float64(real), np.float64(fake)
    n = real.size
    if kind in ("minimax", "non_saturating"):
        # d/dx softplus(-x) = -sigmoid(-x); d/dx softplus(x) = sigmoid(x).
        return -np_sigmoid(-real) / n, np_sigmoid(fake) / n
    if kind == "lsgan":
        return (real - 1) / n, fake / n
    if kind == "wasserstein":
        return np.full(n, -1.0 / n), np.full(n, 1.0 / n)
    assert kind == "hinge"
    return -(1 - real > 0).astype(np.float64) / n, (1 + fake > 0).astype(np.float64) / n


def np_g_grad(kind, fake):
    fake = np.float64(fake)
    n = fake.size
    return {
        "minimax": -np_sigmoid(fake) / n,  # vanishes as fake -> -inf: the saturation
        "non_saturating": -np_sigmoid(-fake) / n,
        "lsgan": (fake - 1) / n,
        "wasserstein": np.full(n, -1.0 / n),
        "hinge": np.full(n, -1.0 / n),
    }[kind]


class TestLossGradients:
    @pytest.mark.parametrize("kind", losses.LOSSES)
    def test_discriminator_gradients(self, kind):
        fn = jax.jit(jax.grad(
            lambda r, f: losses.discriminator_loss(kind, real_logits=r, fake_logits=f),
            argnums=(0, 1)))
        d_real, d_fake = fn(REAL, FAKE)
        want_real, want_fake = np_d_grads(kind, REAL, FAKE)
        assert_close(d_real, want_real, atol=1e-8)
        assert_close(d_fake, want_fake, atol=1e-8)

    @pytest.mark.parametrize("kind", losses.LOSSES)
    def test_generator_gradients(self, kind):
        fn = jax.jit(jax.grad(lambda f: losses.generator_loss(kind, fake_logits=f)))
        assert_close(fn(FAKE), np_g_grad(kind, FAKE), atol=1e-8)

    def test_saturation_is_the_point(self):
        # D rejects the fake confidently: the minimax G gradient is ~0, the non-saturating one
        # is ~-1 per example.
        fake = jnp.array([-50.0])
        minimax = jax.jit(jax.grad(lambda f: losses.minimax_generator_loss(fake_logits=f)))(fake)
        non_sat = jax.jit(jax.grad(
            lambda f: losses.non_saturating_generator_loss(fake_logits=f)))(fake)
        assert abs(float(minimax[0])) < 1e-20
        assert_close(non_sat, [-1.0])


# --- penalties ------------------------------------------------------------------------------

IMAGE_SHAPE = (4, 3, 3, 2)  # [B, H, W, C]
AXES = (1, 2, 3)


def images(seed: int, dtype=np.float32) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=IMAGE_SHAPE), dtype)


def linear_critic(w):
    return lambda x: jnp.sum(w * x, axis=AXES)


def quadratic_critic(x):
    return jnp.sum(jnp.square(x), axis=AXES)


class TestInterpolate:
    def test_one_weight_per_example_in_unit_interval(self):
        real, fake = images(0), images(1)
        x_hat = np.float64(jax.jit(losses.interpolate)(real, fake, jax.random.key(0)))
        assert x_hat.shape == IMAGE_SHAPE
        eps = (x_hat - np.float64(fake)) / (np.float64(real) - np.float64(fake))
        eps = eps.reshape(IMAGE_SHAPE[0], -1)
        np.testing.assert_allclose(eps, eps[:, :1].repeat(eps.shape[1], 1), rtol=1e-4,
                                   atol=1e-4)
        assert np.all((eps >= -1e-4) & (eps <= 1 + 1e-4))
        assert np.unique(eps[:, 0].round(4)).size == IMAGE_SHAPE[0]  # differs across examples

    def test_uses_uniform_with_the_given_key(self):
        real, fake, key = images(0), images(1), jax.random.key(3)
        eps = np.float64(jax.random.uniform(key, (IMAGE_SHAPE[0], 1, 1, 1), jnp.float32))
        expected = eps * np.float64(real) + (1 - eps) * np.float64(fake)
        assert_close(losses.interpolate(real, fake, key), expected)

    def test_float32_from_bfloat16(self):
        out = losses.interpolate(images(0, jnp.bfloat16), images(1, jnp.bfloat16),
                                 jax.random.key(0))
        assert out.dtype == jnp.float32

    def test_shape_mismatch_names_both_shapes(self):
        with pytest.raises(ValueError, match=r"\(4, 3, 3, 2\).*\(2, 3, 3, 2\)"):
            losses.interpolate(images(0), images(1)[:2], jax.random.key(0))


class TestGradientPenalty:
    W = np.random.default_rng(7).normal(scale=0.3, size=IMAGE_SHAPE[1:]).astype(np.float32)

    @pytest.mark.parametrize("target", [1.0, 0.5])
    def test_linear_critic_is_exact_for_any_eps(self, target):
        # grad_x sum(w * x) = w at every x_hat, so the interpolation weights do not matter.
        fn = jax.jit(lambda key: losses.gradient_penalty(
            linear_critic(self.W), real=images(0), fake=images(1), key=key, target=target))
        expected = (np.linalg.norm(np.float64(self.W)) - target) ** 2
        for seed in (0, 1):
            out = fn(jax.random.key(seed))
            assert_f32_scalar(out)
            assert_close(out, expected)

    def test_quadratic_critic_matches_reference(self):
        real, fake, key = images(0), images(1), jax.random.key(5)
        out = jax.jit(lambda r, f, k: losses.gradient_penalty(quadratic_critic, real=r, fake=f,
                                                              key=k))(real, fake, key)
        x_hat = np.float64(losses.interpolate(real, fake, key))
        norms = np.sqrt(np.sum((2 * x_hat) ** 2, axis=AXES))
        assert_close(out, np.mean((norms - 1) ** 2))

    def test_gradient_wrt_critic_params(self):
        # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||.
        def penalty(w):
            return losses.gradient_penalty(linear_critic(w), real=images(0), fake=images(1),
                                           key=jax.random.key(0))

        w = np.float64(self.W)
        norm = np.linalg.norm(w)
        assert_close(jax.jit(jax.grad(penalty))(self.W), 2 * (norm - 1) * w / norm)

    def test_finite_gradient_for_a_flat_critic(self):
        # w = 0: the input gradient is 0, where d sqrt(s)/ds is infinite without the epsilon.
        def penalty(w):
            return losses.gradient_penalty(linear_critic(w), real=images(0), fake=images(1),
                                           key=jax.random.key(0))

        value, grad = jax.jit(jax.value_and_grad(penalty))(jnp.zeros(IMAGE_SHAPE[1:]))
        assert_close(value, 1.0)
        assert_close(grad, np.zeros(IMAGE_SHAPE[1:]))

    def test_float32_with_bfloat16_inputs_and_critic(self):
        w16 = jnp.asarray(self.W, jnp.bfloat16)

        def critic(x):  # computes and returns bfloat16
            return jnp.sum(w16 * x.astype(jnp.bfloat16), axis=AXES)

        out = jax.jit(lambda r, f, k: losses.gradient_penalty(critic, real=r, fake=f, key=k))(
            images(0, jnp.bfloat16), images(1, jnp.bfloat16), jax.random.key(0))
        assert_f32_scalar(out)
        expected = (np.linalg.norm(np.float64(w16.astype(jnp.float32))) - 1) ** 2
        assert_close(out, expected, rtol=1e-2)

    def test_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"\(4, 3, 3, 2\).*\(2, 3, 3, 2\)"):
            losses.gradient_penalty(quadratic_critic, real=images(0), fake=images(1)[:2],
                                    key=jax.random.key(0))


class TestR1Penalty:
    def test_linear_critic(self):
        w = TestGradientPenalty.W
        out = jax.jit(lambda x: losses.r1_penalty(linear_critic(w), real=x))(images(0))
        assert_f32_scalar(out)
        assert_close(out, np.sum(np.float64(w) ** 2))

    def test_quadratic_critic(self):
        real = images(2)
        out = jax.jit(lambda x: losses.r1_penalty(quadratic_critic, real=x))(real)
        assert_close(out, 4 * np.mean(np.sum(np.float64(real) ** 2, axis=AXES)))

    def test_float32_with_bfloat16_inputs(self):
        real = images(2, jnp.bfloat16)
        out = losses.r1_penalty(quadratic_critic, real=real)
        assert_f32_scalar(out)
        real64 = np.float64(real.astype(jnp.float32))
        assert_close(out, 4 * np.mean(np.sum(real64**2, axis=AXES)))


class TestDriftPenalty:
    def test_matches_reference(self):
        out = jax.jit(losses.drift_penalty)(real_logits=REAL)
        assert_f32_scalar(out)
        assert_close(out, np.mean(np.float64(REAL) ** 2))

    def test_float32_from_bfloat16(self):
        assert_f32_scalar(losses.drift_penalty(real_logits=jnp.asarray(REAL, jnp.bfloat16)))
