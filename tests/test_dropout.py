"""BatchDropout: masks drawn for the global batch, so any device count drops the same units."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from common_jax.dropout import BatchDropout
from common_jax.parallel import AXIS


def apply(module, x, key, devices):
    mesh = Mesh(np.array(jax.devices()[:devices]), (AXIS,))

    def per_device(x):
        return module.apply({}, x, deterministic=False, rngs={"dropout": key})

    return np.asarray(jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(AXIS),
                                            out_specs=P(AXIS)))(x))


def test_eight_devices_drop_what_one_device_drops():
    x = jnp.arange(16 * 6, dtype=jnp.float32).reshape(16, 6) + 1.0
    module = BatchDropout(0.5, axis_name=AXIS)
    one = apply(module, x, jax.random.key(3), 1)
    eight = apply(module, x, jax.random.key(3), 8)
    np.testing.assert_array_equal(eight, one)
    dropped = one == 0
    assert 0.3 < dropped.mean() < 0.7  # about half, and not the same rows on every device
    np.testing.assert_allclose(one[~dropped], 2.0 * np.asarray(x)[~dropped])
    assert len({tuple(row) for row in dropped[:8]}) > 1


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_edge_rates_and_inference(rate):
    x = jnp.ones((4, 3))
    out = BatchDropout(rate).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    np.testing.assert_array_equal(out, x if rate == 0.0 else jnp.zeros_like(x))
    np.testing.assert_array_equal(BatchDropout(0.5).apply({}, x, deterministic=True), x)
