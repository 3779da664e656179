"""A whole split evaluated data-parallel: every example exactly once, padding masked out.

`SplitEvaluator` reads a split in padded batches (`common_jax.data.make_eval_iterator`: padded
rows have ``batch["mask"] == 0``), runs a family's per-device evaluation step on each, and adds
the step's masked sums over the batches in float64 on the host. The step is
``eval_step(state, batch) -> {name: sum}``, written per device like a train step: it weights
every row by ``batch["mask"]`` and adds its sums over the devices with
``jax.lax.psum(..., common_jax.parallel.AXIS)``. The family turns the totals into its metrics
(accuracy and a confusion matrix for a classifier, PSNR for an autoencoder).

Batches are decoded once and kept in memory when the split fits in `cache_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from common_jax import data as data_lib
from common_jax.errors import UserError
from common_jax.parallel import DataParallel

CACHE_BYTES = 1 << 30  # keep preprocessed evaluation batches in memory up to this size


def local_eval_batch(eval_batch_size: int, dp: DataParallel) -> int:
    """The per-process evaluation batch; refuses sizes the devices cannot share."""
    n = dp.num_devices
    if eval_batch_size < 1 or eval_batch_size % n:
        raise UserError(
            f"eval_batch_size {eval_batch_size} is not a positive multiple of the {n} devices; "
            f"set --config.eval_batch_size to a multiple of {n} (e.g. {max(n, 512 // n * n)})")
    return eval_batch_size // jax.process_count()


class SplitEvaluator:
    """Masked sums of a per-device evaluation step over a whole split."""

    def __init__(self, source: data_lib.ImageSource, eval_step: Callable, *, dp: DataParallel,
                 batch_size: int, image_size: int, channels: int,
                 cache_bytes: int = CACHE_BYTES):
        self.source, self.dp = source, dp
        self.image_size, self.channels = image_size, channels
        self.local_batch = local_eval_batch(batch_size, dp)
        self._eval_step = eval_step
        self._compiled = None
        self._cache: list[dict[str, np.ndarray]] | None = None
        self._cacheable = source.num_examples * image_size**2 * channels * 4 <= cache_bytes

    def batches(self) -> Iterable[dict[str, np.ndarray]]:
        """This process's padded, masked batches; decoded once and kept when they fit."""
        if self._cache is not None:
            return self._cache
        batches = data_lib.make_eval_iterator(
            self.source, batch_size=self.local_batch, image_size=self.image_size,
            channels=self.channels, process_index=jax.process_index(),
            process_count=jax.process_count())
        if self._cacheable:
            self._cache = list(batches)
            return self._cache
        return batches

    def _compile(self):
        # DataParallel compiles (state, batch) -> (replicated output, metrics) steps; an
        # evaluation has only the replicated output.
        def step(state, batch):
            return self._eval_step(state, batch), {}

        compiled = self.dp.compile(step, donate=False)
        return lambda state, batch: jax.device_get(self.dp.local_state(compiled(state, batch)[0]))

    def sums(self, state: Any) -> dict[str, np.ndarray]:
        """Totals over the split for a host state (one copy, as the loop's actions get it)."""
        if self._compiled is None:
            self._compiled = self._compile()
        device_state = self.dp.put_state(state)
        totals = None
        for batch in self.batches():
            # float64 on the host: float32 totals would lose counts beyond 2**24 examples.
            sums = jax.tree.map(lambda x: np.asarray(x, np.float64),
                                self._compiled(device_state, self.dp.put_batch(batch)))
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        return totals
