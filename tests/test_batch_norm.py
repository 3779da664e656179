"""`common_jax.batch_norm.BatchNorm`: flax's `nn.BatchNorm`'s values, variables and gradients."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from common_jax.batch_norm import BatchNorm, normalize_batch


def images(shape, seed=0, dtype=jnp.float32):
    # An offset and a spread far from 0 and 1, so a missed mean or variance term shows.
    x = np.random.RandomState(seed).randn(*shape) * 3.0 + 1.5
    return jnp.asarray(x, dtype)


def init_both(x, **kwargs):
    kwargs.setdefault("use_running_average", False)
    ours, theirs = BatchNorm(**kwargs), nn.BatchNorm(**kwargs)
    key = jax.random.key(0)
    return (ours, ours.init(key, x)), (theirs, theirs.init(key, x))


def train_loss(module, variables, x, weights):
    y, updates = module.apply(variables, x, mutable=["batch_stats"])
    # A weighted sum of a nonlinear function of y: every output's gradient differs.
    return jnp.sum(weights * jnp.tanh(y.astype(jnp.float32))), (y, updates)


def assert_trees_close(got, want, rtol, atol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=rtol, atol=atol)


def test_variables_have_flax_names_shapes_and_initial_values():
    x = images((4, 5, 5, 3))
    (_, ours), (_, theirs) = init_both(x, momentum=0.9)
    assert_trees_close(ours, theirs, 0, 0)


@pytest.mark.parametrize("shape", [(8, 6, 6, 5), (16, 7)])
def test_training_values_statistics_and_gradients_equal_flax(shape):
    x = images(shape)
    weights = images(shape, seed=1)
    (ours, v_ours), (theirs, v_theirs) = init_both(x, momentum=0.8, epsilon=1e-3)
    grad = jax.jit(jax.grad(train_loss, argnums=(1, 2), has_aux=True), static_argnums=0)
    (dv_ours, dx_ours), (y_ours, new_ours) = grad(ours, v_ours, x, weights)
    (dv_theirs, dx_theirs), (y_theirs, new_theirs) = grad(theirs, v_theirs, x, weights)
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
    assert_trees_close(new_ours, new_theirs, 1e-5, 1e-6)  # the running averages
    assert_trees_close(dv_ours["params"], dv_theirs["params"], 1e-4, 1e-5)
    np.testing.assert_allclose(dx_ours, dx_theirs, rtol=1e-4, atol=1e-6)
    assert np.abs(np.asarray(dx_ours)).max() > 1e-3  # a gradient to compare


def test_evaluation_uses_the_running_averages_as_flax_does():
    x = images((6, 4, 4, 3))
    (ours, v), (theirs, _) = init_both(x, use_running_average=True)
    v = {"params": {"scale": jnp.array([0.5, 1.0, 2.0]), "bias": jnp.array([0.1, -0.2, 0.3])},
         "batch_stats": {"mean": jnp.array([1.0, -1.0, 0.5]), "var": jnp.array([4.0, 0.5, 2.0])}}
    y_ours, y_theirs = ours.apply(v, x), theirs.apply(v, x)
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-6, atol=1e-6)
    dx = jax.grad(lambda x: jnp.sum(jnp.sin(ours.apply(v, x))))(x)
    want = jax.grad(lambda x: jnp.sum(jnp.sin(theirs.apply(v, x))))(x)
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-6)


def test_bfloat16_output_with_float32_statistics_as_flax():
    x = images((8, 4, 4, 6), dtype=jnp.bfloat16)
    weights = images((8, 4, 4, 6), seed=1)
    (ours, v_ours), (theirs, v_theirs) = init_both(x, dtype=jnp.bfloat16, momentum=0.9)
    grad = jax.jit(jax.grad(train_loss, argnums=(1, 2), has_aux=True), static_argnums=0)
    (dv_ours, dx_ours), (y_ours, new_ours) = grad(ours, v_ours, x, weights)
    (dv_theirs, dx_theirs), (y_theirs, new_theirs) = grad(theirs, v_theirs, x, weights)
    assert y_ours.dtype == y_theirs.dtype == jnp.bfloat16
    assert dx_ours.dtype == jnp.bfloat16
    assert new_ours["batch_stats"]["mean"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32),
                               rtol=2e-2, atol=2e-2)
    assert_trees_close(new_ours, new_theirs, 1e-5, 1e-6)
    assert_trees_close(dv_ours["params"], dv_theirs["params"], 5e-2, 5e-2)


def reference_normalize(x, scale, bias, epsilon):
    """The same function for JAX to differentiate: the gradient to check against."""
    mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
    var = jnp.maximum(0.0, jnp.mean(x * x, axis=tuple(range(x.ndim - 1))) - mean * mean)
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var


def statistics_loss(normalize, x, scale, bias):
    # Uses the statistics outputs too, so their cotangents are not zero.
    y, mean, var = normalize(x, scale, bias)
    return jnp.sum(jnp.tanh(y) * x) + jnp.sum(mean**3) + jnp.sum(jnp.sqrt(var))


def test_gradients_through_the_statistics_and_second_derivatives():
    x = images((6, 3, 3, 4))
    scale, bias = jnp.array([0.5, 1.0, 2.0, -1.0]), jnp.array([0.1, 0.0, -0.3, 0.2])
    ours = functools.partial(normalize_batch, epsilon=1e-5, axis_name=None,
                             out_dtype=jnp.float32)
    theirs = functools.partial(reference_normalize, epsilon=1e-5)
    got = jax.grad(statistics_loss, argnums=(1, 2, 3))(ours, x, scale, bias)
    want = jax.grad(statistics_loss, argnums=(1, 2, 3))(theirs, x, scale, bias)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

    # A gradient penalty's shape: the gradient of a norm of the input gradient.
    def penalty(normalize, scale):
        dx = jax.grad(lambda x: statistics_loss(normalize, x, scale, bias))(x)
        return jnp.sum(dx**2)

    np.testing.assert_allclose(jax.grad(penalty, argnums=1)(ours, scale),
                               jax.grad(penalty, argnums=1)(theirs, scale), rtol=1e-3,
                               atol=1e-4)


@pytest.mark.parametrize("check_vma", [False, True])
def test_statistics_across_devices_match_the_whole_batch_on_one(check_vma):
    devices = jax.devices()
    if len(devices) < 2:
        pytest.skip("needs several devices (tests force 8 CPU devices)")
    n = len(devices)
    x = images((2 * n, 3, 3, 4))
    weights = images((2 * n, 3, 3, 4), seed=1)
    module = BatchNorm(False, momentum=0.9, axis_name="batch")
    variables = BatchNorm(False, momentum=0.9).init(jax.random.key(0), x)
    mesh = Mesh(np.array(devices), ("batch",))

    def local(variables, x, weights):
        (loss, (_, updates)), (dv, dx) = jax.value_and_grad(
            train_loss, argnums=(1, 2), has_aux=True)(module, variables, x, weights)
        # Parameters are replicated: their gradient is the sum of every device's share (with
        # the type checks, JAX sums it already: a replicated value's gradient is replicated).
        return (jax.lax.psum(loss, "batch"), updates,
                dv if check_vma else jax.lax.psum(dv, "batch"), dx)

    sharded = jax.jit(jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P("batch"), P("batch")),
        out_specs=(P(), P(), P(), P("batch")), check_vma=check_vma))
    loss, updates, dv, dx = sharded(variables, x, weights)

    whole = BatchNorm(False, momentum=0.9)
    (want_loss, (_, want_updates)), (want_dv, want_dx) = jax.value_and_grad(
        train_loss, argnums=(1, 2), has_aux=True)(whole, variables, x, weights)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    assert_trees_close(updates, want_updates, 1e-5, 1e-6)
    assert_trees_close(dv["params"], want_dv["params"], 1e-4, 1e-5)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-6)
