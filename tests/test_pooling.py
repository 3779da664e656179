"""2x2 max pooling as element-wise work: the values and gradients of ``nn.max_pool``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from common_jax.pooling import max_pool_2x2


def reference(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def values_and_gradients(pool, x, g):
    value, vjp = jax.vjp(jax.jit(pool), x)
    return value, vjp(g)[0]


@pytest.mark.parametrize("shape", [(4, 8, 8, 3), (2, 7, 9, 5), (3, 1, 4, 2)])
def test_values_and_gradients_equal_flax_max_pool(shape):
    x = jnp.asarray(np.random.RandomState(0).randn(*shape), jnp.float32)
    out_shape = reference(x).shape
    g = jnp.asarray(np.random.RandomState(1).randn(*out_shape), jnp.float32)
    want_y, want_dx = values_and_gradients(reference, x, g)
    got_y, got_dx = values_and_gradients(max_pool_2x2, x, g)
    assert got_y.shape == out_shape
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_dx, want_dx)
    if shape[1] % 2:  # the dropped last row gets no gradient
        assert not np.any(np.asarray(got_dx)[:, -1])


def test_ties_send_the_gradient_to_the_first_maximum_as_select_and_scatter_does():
    # Small integers after a ReLU: most windows hold several equal maxima, many all zeros.
    x = jnp.asarray(np.maximum(np.random.RandomState(2).randint(-2, 3, (8, 6, 6, 4)), 0),
                    jnp.float32)
    g = jnp.asarray(np.random.RandomState(3).randn(8, 3, 3, 4), jnp.float32)
    want_y, want_dx = values_and_gradients(reference, x, g)
    got_y, got_dx = values_and_gradients(max_pool_2x2, x, g)
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_dx, want_dx)
    # Exactly one position per window receives its gradient, whatever the ties.
    received = np.asarray(got_dx != 0).reshape(8, 3, 2, 3, 2, 4).sum(axis=(2, 4))
    assert received.max() == 1 and received.sum() == np.count_nonzero(np.asarray(g))


def test_bfloat16_leading_dimensions_and_vmap():
    x = jnp.asarray(np.random.RandomState(4).randn(3, 2, 4, 6, 2), jnp.bfloat16)
    got = max_pool_2x2(x)
    assert got.dtype == jnp.bfloat16 and got.shape == (3, 2, 2, 3, 2)
    np.testing.assert_array_equal(got, jax.vmap(reference)(x))
    grad = jax.grad(lambda x: jax.vmap(max_pool_2x2)(x).astype(jnp.float32).sum())(x)
    want = jax.grad(lambda x: jax.vmap(reference)(x).astype(jnp.float32).sum())(x)
    np.testing.assert_array_equal(grad, want)


def test_a_window_holding_nan_pools_to_nan_and_rejects_unbatched_vectors():
    x = jnp.zeros((1, 2, 2, 1)).at[0, 1, 1, 0].set(jnp.nan)
    assert np.isnan(max_pool_2x2(x)).all()
    with pytest.raises(ValueError, match=r"\[..., H, W, C\]"):
        max_pool_2x2(jnp.zeros((4, 4)))
