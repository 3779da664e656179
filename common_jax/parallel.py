"""Data parallelism over one device mesh, in one process or many.

A step is written for one device with a named axis (``AXIS``): it averages gradients and
batch-norm statistics over that axis, so N devices compute what one device computes on the
whole batch. `DataParallel` runs it either with ``jax.jit`` + ``jax.shard_map`` over a device
`Mesh` (the default) or with ``jax.pmap`` (one process only). The state is replicated; batches
are split along their first axis. `DataParallel.forward` compiles the inference twin of a step,
``fn(replicated params, batch split over the devices)``, for sampling and feature extraction.

Across processes (``jax.distributed``, see `maybe_initialize_distributed`) the mesh spans every
device of every process: each process feeds its own slice of the global batch, the state is a
global array replicated on all devices (what Orbax saves, from every process), and
`DataParallel.local_state` gives one process its own copy for sampling and evaluation.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from common_jax.config_utils import env_switch
from common_jax.errors import UserError

AXIS = "data"
MODES = ("shard_map", "pmap")

# ---------------------------------------------------------------------------------------------
# Joining a multi-process job

# JAX reads JAX_COORDINATOR_ADDRESS itself but no variable for the process count or index, so a
# plain launch (several processes on one machine, or machines without a cluster manager) names
# them here.
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"
# "auto" (default): join when the variables above or a multi-process cluster job say so;
# "1": always call jax.distributed.initialize() (e.g. a Cloud TPU pod found by its metadata
# server, Kubernetes with jax[k8s]); "0": never.
DISTRIBUTED_ENV = "COMMON_JAX_DISTRIBUTED"


def distributed_arguments(env: Mapping[str, str] | None = None) -> dict | None:
    """The keyword arguments of ``jax.distributed.initialize`` this environment asks for, or
    None for a single-process run. Reads only the environment (no JAX call).

    Arguments left as None are found by JAX's own cluster detection (SLURM, Open MPI, Cloud TPU).
    """
    env = os.environ if env is None else env
    choice = env_switch(env, DISTRIBUTED_ENV, default="auto", fix="set it to auto, 1 or 0")
    if choice == "off":
        return None
    arguments = {"coordinator_address": env.get("JAX_COORDINATOR_ADDRESS") or None,
                 "num_processes": _env_int(env, NUM_PROCESSES_ENV),
                 "process_id": _env_int(env, PROCESS_ID_ENV)}
    if arguments["num_processes"] == 1 and choice != "on":
        return None  # nothing to join
    given = [value is not None for value in arguments.values()]
    cluster = cluster_job(env)
    if cluster is None and any(given) and not all(given):
        raise UserError("a multi-process launch needs JAX_COORDINATOR_ADDRESS (host:port of "
                        f"process 0), {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}; set all three "
                        "(e.g. 127.0.0.1:12345, 2 and 0 in the first process), or none")
    if any(given) or cluster is not None or choice == "on":
        return arguments
    return None


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer; set it to a number") from None


def cluster_job(env: Mapping[str, str]) -> str | None:
    """The multi-process cluster job JAX can configure itself from these variables, if any.

    The same variables JAX's detection reads (jax/_src/clusters), but only jobs of more than one
    process: a one-task allocation keeps running as a plain single process.
    """
    def count(name: str) -> int:
        try:
            return int(env.get(name, "1"))
        except ValueError:
            return 1

    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
    if all(name in env for name in slurm) and count("SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in env and count("OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h]) > 1:
        return "tpu"
    return None


def maybe_initialize_distributed() -> bool:
    """Joins a multi-process job when the environment describes one; True when it did.

    Must run before anything else touches JAX's devices: ``jax.distributed.initialize`` refuses
    to run once a backend exists, so nothing here asks JAX about processes or devices first.
    """
    arguments = distributed_arguments()
    if arguments is None or jax.distributed.is_initialized():
        return False
    # Collectives between processes on CPU need an implementation; gloo (over TCP) is JAX's
    # default in recent versions, older ones had none.
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(**arguments)
    except ValueError as error:  # nothing found to join: JAX names the missing argument
        raise UserError(f"could not join a multi-process job ({error}); set "
                        f"JAX_COORDINATOR_ADDRESS, {NUM_PROCESSES_ENV} and {PROCESS_ID_ENV}, or "
                        f"{DISTRIBUTED_ENV}=0 for one process") from None
    return True


def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process of the job (itself in a single-process run).

    For decisions every process must take together, e.g. stopping on a signal that reached one
    of them: a process that stops alone leaves the others waiting in the next step's
    collectives. One small all-gather (about 2 ms between 2 processes on one CPU machine).
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(bool(flag)))))


def _process_count_before_backend() -> int:
    """The number of processes of the job, known once jax.distributed is initialised, without
    creating the backend (`jax.process_count()` would, and fix the CPU device count)."""
    from jax._src import distributed  # the only place the count lives before the backend

    return getattr(distributed.global_state, "num_processes", 1) or 1


# ---------------------------------------------------------------------------------------------
# CPU devices


def use_cpu_cores(batch_sizes: tuple[int, ...], cores: int | None = None) -> int:
    """On CPU, runs one device per core; returns the number of CPU devices chosen (1: none).

    XLA's CPU backend runs a convolution on one thread, so a single CPU device leaves the other
    cores idle in a conv net's train step. With one device per core, the data-parallel step
    computes the same result (gradients and batch-norm statistics are averaged over the devices)
    on all of them. The count is the largest power of two that is at most the cores this process
    may use and divides every batch size's share of this process. Leaves an explicit choice
    alone (--xla_force_host_platform_device_count in XLA_FLAGS, or jax_num_cpu_devices), and must
    run before JAX creates its devices; otherwise it changes nothing.
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 1
    if jax.config.jax_num_cpu_devices > 0:
        return jax.config.jax_num_cpu_devices
    processes = _process_count_before_backend()
    shares = tuple(b // processes for b in batch_sizes)
    count = cpu_device_count(shares, cores or len(os.sched_getaffinity(0)))
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


# ---------------------------------------------------------------------------------------------
# The data-parallel helper


def local_batch_slice(global_values: jax.Array, local_size: int) -> jax.Array:
    """This device's rows of an array computed identically on every device.

    Drawing random numbers for the whole global batch and slicing them makes a run on N devices
    use exactly the numbers a run on one device uses.
    """
    start = jax.lax.axis_index(AXIS) * local_size
    return jax.lax.dynamic_slice_in_dim(global_values, start, local_size)


# Compiled forwards by (caller's key, devices): sampling and feature extraction build a new
# DataParallel per call, and must not compile again each time.
_FORWARDS: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()
_MAX_FORWARDS = 32


class DataParallel:
    """Places state and batches on the devices and compiles per-device functions for them.

    `devices` defaults to every device of every process. Sampling and feature extraction on one
    process pass ``jax.local_devices()``.
    """

    def __init__(self, mode: str = "shard_map", devices: list | None = None):
        if mode not in MODES:
            raise UserError(f"unknown parallel mode '{mode}'; set --config.parallel to one of "
                            f"{', '.join(MODES)}")
        devices = list(devices) if devices is not None else jax.devices()
        self.multiprocess = len({d.process_index for d in devices}) > 1
        if mode == "pmap" and self.multiprocess:
            # pmap is in maintenance mode, and its arrays carry one copy per *local* device on a
            # leading axis: no global array for Orbax to save from every process, and batches
            # that are not slices of one global batch. shard_map computes the same step.
            raise UserError("parallel mode 'pmap' runs in one process only; set "
                            "--config.parallel=shard_map for a multi-process run")
        self.mode = mode
        # Each process's devices side by side, in process order: process p's slice of the
        # global batch is then rows p*L .. (p+1)*L-1, the rows a one-process run gives them.
        self.devices = sorted(devices, key=lambda d: (d.process_index, d.id))
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
        return global_batch * len(self.local_devices) // self.num_devices

    def round_up(self, rows: int) -> int:
        """The smallest multiple of the device count that holds `rows` (padded batches)."""
        return -(-rows // self.num_devices) * self.num_devices

    # ---- training steps ----------------------------------------------------------------------

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
        """Replicates a state (host arrays, or arrays on one device) in `compile`'s layout.

        Returns once every copy is in place. A step dispatched while the copies were still
        queued sometimes deadlocked on CPU devices with the oneDNN convolutions: one device's
        share of the step waited for a free slot among that device's in-flight computations
        while the other's waited for it in the step's first all-reduce, until XLA aborted the
        process after 40 s (docs/benchmarks.md, "A deadlock on the first step").
        """
        if self.mode == "pmap":  # a leading axis of one copy per local device
            n = len(self.local_devices)
            placed = jax.tree.map(
                lambda x: jax.device_put(np.broadcast_to(x, (n, *np.shape(x))), self.split), state)
        else:
            placed = self.put_replicated(state)
        return jax.block_until_ready(placed)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Places this process's slice of the global batch, split along the batch axis."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            return jax.tree.map(
                lambda x: jax.device_put(x.reshape(n, -1, *x.shape[1:]), self.split), batch)
        return self.put_split(batch)

    def get_state(self, state: Any) -> Any:
        """The state as arrays every process holds alike: what each process hands Orbax.

        Across processes these are global arrays (not readable as a whole by one process'
        device code); `local_state` is the copy to compute with."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], state)
        return state

    def local_state(self, state: Any) -> Any:
        """This process's own copy of a replicated state, on its first device (for sampling,
        evaluation and writing images). A copy: the next step may donate the state's buffers."""
        device = self.local_devices[0]

        def one_copy(x):
            if not isinstance(x, jax.Array):
                return x
            if self.mode == "pmap":
                x = x[0]
            return jax.device_put(x.addressable_data(0), device, may_alias=False)

        return jax.tree.map(one_copy, state)

    def get_metrics(self, metrics: Any) -> dict[str, float]:
        """Device metrics (identical on every device) as host floats."""
        if self.mode == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        return {k: float(v) for k, v in jax.device_get(metrics).items()}

    # ---- placement and inference, in every mode ---------------------------------------------

    def put_replicated(self, tree: Any) -> Any:
        """A copy of `tree` on every device of the mesh (every process passes the same values).

        Across processes the copies are built from host values: `jax.device_put` cannot move a
        one-device array to other processes' devices, and would gather every leaf from every
        process to check that they agree.
        """
        if not self.multiprocess:
            return jax.device_put(tree, self.replicated)

        def place(x):
            if isinstance(x, jax.Array) and x.sharding == self.replicated:
                return x
            if isinstance(x, jax.Array) and x.is_fully_replicated:
                x = x.addressable_data(0)  # readable here even when x spans processes
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, self.replicated,
                                                lambda index: host[index])

        return jax.tree.map(place, tree)

    def put_split(self, batch: Any) -> Any:
        """This process's rows of a global batch, split along the first axis over the mesh."""
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self.split, x),
                            batch)

    def forward(self, fn: Callable, *, key: Any = None) -> Callable:
        """``fn(params, batch) -> outputs`` compiled once with jit + shard_map on this mesh.

        `fn` runs per device on a slice of the batch (it may use ``AXIS`` collectives, e.g.
        batch norm over the whole batch); params are replicated (`put_replicated`), the batch
        and every output are split along their first axis (`put_split`). Calls with an equal,
        hashable `key` (e.g. the Flax module and the options `fn` closes over) on the same
        devices reuse the first compiled function; without a key, every call compiles anew.
        """
        cache_key = (key, tuple(self.devices)) if key is not None else None
        if cache_key in _FORWARDS:
            _FORWARDS.move_to_end(cache_key)
            return _FORWARDS[cache_key]
        compiled = jax.jit(jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                                         out_specs=P(AXIS)))
        if cache_key is not None:
            _FORWARDS[cache_key] = compiled
            if len(_FORWARDS) > _MAX_FORWARDS:
                _FORWARDS.popitem(last=False)
        return compiled


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every leaf of a pytree is finite (a scalar, for the host to check)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
