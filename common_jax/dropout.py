"""Dropout whose masks are drawn for the global batch, so N devices drop what one device drops.

Flax's `nn.Dropout` draws a mask of the shape it is given: inside a data-parallel step that is
one device's slice, and the masks then depend on how the batch is split. `BatchDropout` draws
the mask for the whole batch (every device computes the same one from the same key) and keeps
this device's rows, as the train steps do with z and the WGAN-GP weights
(`common_jax.parallel.local_batch_slice`). The cost is the random bits of the whole batch on
every device, small beside the convolutions around a dropout layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchDropout(nn.Module):
    """Inverted dropout at `rate`; with `axis_name` (inside a data-parallel step) the mask is
    drawn for the batch of all devices on that axis and sliced. Needs the "dropout" rng, the
    same key on every device."""

    rate: float
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        key = self.make_rng("dropout")
        rows = x.shape[0]
        if self.axis_name is None:
            mask = jax.random.bernoulli(key, keep, x.shape)
        else:
            devices = jax.lax.axis_size(self.axis_name)
            mask = jax.random.bernoulli(key, keep, (devices * rows, *x.shape[1:]))
            start = jax.lax.axis_index(self.axis_name) * rows
            mask = jax.lax.dynamic_slice_in_dim(mask, start, rows)
        return jnp.where(mask, x / keep, jnp.zeros_like(x)).astype(x.dtype)
