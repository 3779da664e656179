"""Data parallelism: one per-device step function, run two ways over the local devices.

A step is written for one device with a named axis (``AXIS``): it averages gradients and
batch-norm statistics over that axis, so N devices compute what one device computes on the
whole batch. `DataParallel` runs it either with ``jax.jit`` + ``jax.shard_map`` over a device
`Mesh` (the default) or with ``jax.pmap``. The state is replicated; batches are split along
their first axis. Across hosts each process feeds its own slice of the global batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common_jax.errors import UserError

AXIS = "data"
MODES = ("shard_map", "pmap")


def maybe_initialize_distributed() -> None:
    """Joins a multi-process job when the launcher set JAX's coordinator variables."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") and jax.process_count() == 1:
        jax.distributed.initialize()


def use_cpu_cores(batch_sizes: tuple[int, ...], cores: int | None = None) -> int:
    """On CPU, runs one device per core; returns the number of CPU devices chosen (1: none).

    XLA's CPU backend runs a convolution on one thread, so a single CPU device leaves the other
    cores idle in a conv net's train step. With one device per core, the data-parallel step
    computes the same result (gradients and batch-norm statistics are averaged over the devices)
    on all of them. The count is the largest power of two that is at most the cores this process
    may use and divides every batch size. Leaves an explicit choice alone
    (--xla_force_host_platform_device_count in XLA_FLAGS, or jax_num_cpu_devices), and must run
    before JAX creates its devices; otherwise it changes nothing.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 1
    if jax.config.jax_num_cpu_devices > 0:
        return jax.config.jax_num_cpu_devices
    count = cpu_device_count(batch_sizes, cores or len(os.sched_getaffinity(0)))
    if count > 1:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:  # devices exist already: too late to change their number
            return 1
    return count


def cpu_device_count(batch_sizes: tuple[int, ...], cores: int) -> int:
    """The largest power of two <= cores dividing every (non-zero) batch size."""
    count = 1
    while count * 2 <= cores and all(b % (count * 2) == 0 for b in batch_sizes if b):
        count *= 2
    return count


def local_batch_slice(global_values: jax.Array, local_size: int) -> jax.Array:
    """This device's rows of an array computed identically on every device.

    Drawing random numbers for the whole global batch and slicing them makes a run on N devices
    use exactly the numbers a run on one device uses.
    """
    start = jax.lax.axis_index(AXIS) * local_size
    return jax.lax.dynamic_slice_in_dim(global_values, start, local_size)


class DataParallel:
    """Places state and batches on the devices and compiles a per-device step for them."""

    def __init__(self, mode: str = "shard_map", devices: list | None = None):
        if mode not in MODES:
            raise UserError(f"unknown parallel mode '{mode}'; set --config.parallel to one of "
                            f"{', '.join(MODES)}")
        self.mode = mode
        self.devices = list(devices) if devices is not None else jax.devices()
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.split = NamedSharding(self.mesh, P(AXIS))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def check_batch_size(self, global_batch: int) -> int:
        """Returns the per-process batch; refuses sizes the devices cannot share equally."""
        if global_batch % self.num_devices:
            lower = global_batch // self.num_devices * self.num_devices
            raise UserError(
                f"batch_size {global_batch} is not divisible by the {self.num_devices} devices; "
                f"set --config.batch_size to a multiple of {self.num_devices} (e.g. "
                f"{max(lower, self.num_devices)} or {lower + self.num_devices})")
        return global_batch // jax.process_count()

    def compile(self, step: Callable, *, donate: bool = True) -> Callable:
        """Compiles ``step(state, batch) -> (state, metrics)``; metrics must be pmean-ed."""
        donate_argnums = (0,) if donate else ()
        if self.mode == "pmap":
            return jax.pmap(step, axis_name=AXIS, devices=self.local_devices,
                            donate_argnums=donate_argnums)
        # check_vma=False keeps pmap's semantics (no implicit psum of gradients with respect to
        # replicated inputs), so the same step code is correct under both modes.
        sharded = jax.shard_map(step, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                out_specs=(P(), P()), check_vma=False)
        return jax.jit(sharded, donate_argnums=donate_argnums)

    def put_state(self, state: Any) -> Any:
        """Replicates a host state onto the devices in the layout `compile`'s step expects."""
        if self.mode == "pmap":  # a leading axis of one copy per local device
            n = len(self.local_devices)
            return jax.tree.map(
                lambda x: jax.device_put(np.broadcast_to(x, (n, *np.shape(x))), self.split), state)
        return jax.device_put(state, self.replicated)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Places this process's slice of the global batch, split along the batch axis."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            return jax.tree.map(
                lambda x: jax.device_put(x.reshape(n, -1, *x.shape[1:]), self.split), batch)
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.split, x), batch)

    def get_state(self, state: Any) -> Any:
        """One copy of a replicated state (for checkpoints, sampling and evaluation)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], state)
        return state

    def get_metrics(self, metrics: Any) -> dict[str, float]:
        """Device metrics (identical on every device) as host floats."""
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every leaf of a pytree is finite (a scalar, for the host to check)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
