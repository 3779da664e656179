"""Populations: K independent models of one family trained side by side in one compiled step.

A config's `population` section (`population_config`) turns it on. Every member is the model a
single run would train, with its own seed (initialisation, z, dropout: everything the state's
key drives) and its own values of the hyper-parameters the family declares per-member (e.g.
the DCGAN's ``optimizer.g_lr``); all members read the same batches, in the order the config's
own ``seed`` gives. The state is a `PopulationState`: the family's state with a leading member
axis on every leaf, beside the per-member values. The family's per-device step runs under
``jax.vmap`` over that axis inside the data-parallel step (`wrap_step`), so one step compiles
once for the whole population and member i computes what a single run with member i's settings
computes on the same batches.

Per-member values reach the step as traced scalars: `wrap_step` hands the family's step a config
in which those keys hold the member's value from the state, so changing them changes no
compiled program. A step that branches in Python on such a key asks `active(value)` instead of
``if value:`` (a member with 0 then adds 0 times the term).

Also here: metric names per member (``member3/d_loss``), selecting a member or the best one, and
the memory estimate that refuses a population the machine cannot hold.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common_jax.errors import UserError

log = logging.getLogger(__name__)

SECTION = "population"
PREFIX = "member"  # metric and image names: member0/d_loss, member0/samples


def population_config() -> ml_collections.ConfigDict:
    """The `population` config section, off by default (members = 0: one model, no member axis).

    Keys (``--config.population.<key>`` on the command line):
      members: K models trained side by side; 0: off. 1 is a population of one (the member
        axis and the vmapped step, e.g. to measure their cost).
      seeds: one seed per member, comma-separated, e.g. ``"0,1,2,3"``; empty: every member uses
        ``seed``. The data order always follows ``seed`` and is shared by all members. (A
        string, as `hparams`: a tuple would come back from a checkpoint's JSON as a list.)
      hparams: per-member values of the keys the family declares (its POPULATION_KEYS), as
        space-separated ``key=v1,v2,...`` entries with one value per member, e.g.
        ``"optimizer.g_lr=1e-4,2e-4 optimizer.d_lr=2e-4,2e-4"``.
      memory_check: refuse at start-up a population whose estimated memory exceeds what is
        available (see `check_fits`).
    """
    p = ml_collections.ConfigDict()
    p.members = 0
    p.seeds = ""
    p.hparams = ""
    p.memory_check = True
    return p


@dataclasses.dataclass(frozen=True)
class Spec:
    """A checked population section: the member count, each member's seed and values."""

    members: int
    seeds: tuple[int, ...]
    hparams: dict[str, tuple[float, ...]]  # dotted config key -> one value per member

    def settings(self, index: int) -> dict[str, Any]:
        """Member `index`'s seed and values, for logs and summary.json."""
        return {"seed": self.seeds[index],
                **{key: values[index] for key, values in self.hparams.items()}}


@flax.struct.dataclass
class PopulationState:
    """The state of a population: the family's state with a leading member axis on every leaf
    (``members.step`` is int32[K]), the per-member values the step reads and the seeds."""

    members: Any
    hparams: dict  # nested like the config: {"optimizer": {"g_lr": float32[K]}}
    seeds: jax.Array  # int32[K], the seed each member was created from


# ----------------------------------------------------------------------------- the section


def section(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config's population section over the defaults (configs older than it have none)."""
    merged = population_config()
    saved = config.get(SECTION) if hasattr(config, "get") else None
    if saved:
        merged.update(saved.to_dict() if hasattr(saved, "to_dict") else dict(saved))
    return merged


def enabled(config: ml_collections.ConfigDict) -> bool:
    return int(section(config).members) > 0


def size(config: ml_collections.ConfigDict) -> int:
    """The member count K (0: not a population)."""
    return max(int(section(config).members), 0)


def resumable(keys: frozenset[str], config: ml_collections.ConfigDict) -> frozenset[str]:
    """A family's resumable keys, plus the whole section while the population is off: runs
    saved before the section existed resume, and an unused section changes nothing trained."""
    return keys if enabled(config) else keys | {SECTION}


def parse(config: ml_collections.ConfigDict, keys: Sequence[str] = ()) -> Spec:
    """The checked section; every mistake is a one-line UserError naming the fix.

    `keys` are the dotted keys the family lets vary per member (its POPULATION_KEYS).
    """
    p = section(config)
    members = int(p.members)
    seeds, hparams = str(p.seeds or "").strip(), str(p.hparams or "").strip()
    if members < 0:
        raise UserError(f"population.members must not be negative, got {members}; set "
                        "--config.population.members to 0 (off) or the member count")
    if members == 0:
        if seeds or hparams:
            given = "population.seeds" if seeds else "population.hparams"
            raise UserError(f"{given} is set but population.members is 0 (off); set "
                            "--config.population.members to the member count")
        return Spec(0, (), {})
    values = _parse_hparams(hparams, members, keys, config)
    return Spec(members, _checked_seeds(seeds, members, config), values)


def _parse_hparams(text: str, members: int, keys: Sequence[str],
                   config) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    for entry in text.replace(";", " ").split():
        key, sep, listed = entry.partition("=")
        if not sep or not key or not listed:
            raise UserError(f"bad --config.population.hparams entry '{entry}'; give "
                            "space-separated 'key=v1,v2,...' entries, e.g. "
                            "'optimizer.g_lr=1e-4,2e-4'")
        if key not in keys:
            allowed = ", ".join(keys) if keys else "none"
            raise UserError(f"{key} cannot vary per member in a {config.get('trainer', '')} "
                            f"population; per-member keys: {allowed} (population.hparams)")
        if key in out:
            raise UserError(f"population.hparams gives {key} twice; give it once, with one "
                            "value per member")
        out[key] = _numbers(key, listed.split(","), members)
    return out


def _numbers(key: str, items: list[str], members: int) -> tuple[float, ...]:
    try:
        values = tuple(float(item) for item in items)
    except ValueError:
        raise UserError(f"population.hparams {key}={','.join(items)} holds a value that is not "
                        "a number; give numbers, e.g. 1e-4,2e-4") from None
    if len(values) != members:
        raise UserError(f"population.hparams gives {len(values)} values of {key} for "
                        f"{members} members; give one per member (or set "
                        f"--config.population.members={len(values)})")
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"population.hparams {key} holds a value that is not finite; give "
                        "finite numbers")
    return values


def _checked_seeds(text: str, members: int, config) -> tuple[int, ...]:
    if not text:
        return (int(config.seed),) * members
    items = text.replace(",", " ").split()
    try:
        seeds = tuple(int(item) for item in items)
    except ValueError:
        raise UserError(f"population.seeds must be integers, got '{text}'; e.g. "
                        "--config.population.seeds=0,1,2,3") from None
    if len(seeds) != members:
        raise UserError(f"population.seeds gives {len(seeds)} seeds for {members} members; "
                        f"give one per member (or set --config.population.members={len(seeds)})")
    return seeds


def check(config: ml_collections.ConfigDict, keys: Sequence[str]) -> Spec:
    """`parse`, and refuses a population whose members would all be the same model."""
    spec = parse(config, keys)
    if spec.members > 1 and len({tuple(spec.settings(i).values())
                                 for i in range(spec.members)}) < spec.members:
        raise UserError(f"two of the {spec.members} members have the same seed and values, "
                        "and would train the same model; give each its own seed "
                        f"(--config.population.seeds=0,1,...,{spec.members - 1}) or values "
                        "(--config.population.hparams)")
    return spec


def describe(spec: Spec) -> dict[str, Any]:
    """summary.json's "population": members, seeds and per-member values."""
    return {"members": spec.members, "seeds": list(spec.seeds),
            "hparams": {key: list(values) for key, values in spec.hparams.items()}}


# ----------------------------------------------------------------------------- member configs


def base_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config with the population off: what every member shares (its model, data, ...)."""
    out = ml_collections.ConfigDict(config.to_dict())
    if SECTION in out:
        out[SECTION] = population_config()
    return out


def member_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
    """The config of a single run with member `index`'s seed and values (population off)."""
    spec = parse(config, _declared(config))
    check_member(index, spec.members)
    out = base_config(config)
    out.seed = spec.seeds[index]
    for key, values in spec.hparams.items():
        _set(out, key, values[index])
    return out


def _declared(config) -> tuple[str, ...]:
    # A saved config was checked when it trained: every key it lists was declared then.
    return tuple(entry.partition("=")[0]
                 for entry in str(section(config).hparams or "").replace(";", " ").split())


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    node[leaf] = value


def _traced_config(base: dict, hparams: dict) -> ml_collections.ConfigDict:
    """A config (built from plain `base`) whose per-member keys hold this member's traced
    values; built anew, because a ConfigDict refuses to turn a float setting into an array."""
    tree = copy.deepcopy(base)
    for key, value in flat_hparams(hparams).items():
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node[name]
        node[leaf] = value
    return ml_collections.ConfigDict(tree)


def flat_hparams(hparams: dict, prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"g_lr": x}} -> {"optimizer.g_lr": x}."""
    out = {}
    for name, value in hparams.items():
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def active(value: Any) -> bool:
    """Whether a term weighted by a config value must be computed: a number unless it is 0, and
    always a per-member value traced in a population step (a member whose value is 0 adds 0
    times the term, the same loss as a single run that skips it)."""
    return isinstance(value, jax.Array) or bool(value)


# ----------------------------------------------------------------------------- state and step


def create_state(config: ml_collections.ConfigDict,
                 create_member: Callable[[ml_collections.ConfigDict], Any]) -> PopulationState:
    """Every member's fresh state, ``create_member(member_config(config, i))``, stacked on a
    leading axis, with the per-member values and seeds."""
    spec = parse(config, _declared(config))
    states = [create_member(member_config(config, i)) for i in range(spec.members)]
    members = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    hparams: dict = {}
    for key, values in spec.hparams.items():
        *parents, leaf = key.split(".")
        node = hparams
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = jnp.asarray(values, jnp.float32)
    return PopulationState(members=members, hparams=hparams,
                           seeds=jnp.asarray(spec.seeds, jnp.int32))


def wrap_step(train_step: Callable, config: ml_collections.ConfigDict) -> Callable:
    """The per-device ``(state, batch) -> (state, metrics)`` step the loop compiles.

    Off: ``train_step(state, batch, config=config)``. On: `train_step` vmapped over the
    members, every member on the same batch with a config holding its own values (traced, read
    from ``state.hparams``); metrics per member as ``member{i}/{name}``, and one "finite" that
    is 1 while every member's weights are finite.
    """
    if not enabled(config):
        return _bound(train_step, ml_collections.FrozenConfigDict(config))
    base = base_config(config).to_dict()

    def step(state: PopulationState, batch):
        def one(member, hparams):
            return train_step(member, batch, config=_traced_config(base, hparams))

        members, metrics = jax.vmap(one)(state.members, state.hparams)
        return state.replace(members=members), member_metrics(metrics)

    return step


def _bound(train_step: Callable, config) -> Callable:
    def step(state, batch):
        return train_step(state, batch, config=config)

    return step


def member_metrics(metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{name: [K]} -> {"member{i}/name": scalar}, with "finite" as one flag for all members."""
    out = {}
    for name, values in metrics.items():
        if name == "finite":
            continue
        out.update({key(i, name): values[i] for i in range(values.shape[0])})
    if "finite" in metrics:
        out["finite"] = jnp.min(metrics["finite"])
    return out


def key(index: int, name: str) -> str:
    """A member's metric, image or summary name: ``member3/d_loss``."""
    return f"{PREFIX}{index}/{name}"


def names(config: ml_collections.ConfigDict, metrics: Sequence[str], *,
          first_only: bool = False) -> tuple[str, ...]:
    """Metric names as a population logs them (every member's, or the first's), unchanged
    when the population is off."""
    if not enabled(config):
        return tuple(metrics)
    count = 1 if first_only else size(config)
    return tuple(key(i, name) for i in range(count) for name in metrics)


# ----------------------------------------------------------------------------- selection


def each(state: Any) -> Iterator[tuple[int | None, Any]]:
    """(member index, member state) of a population; (None, state) of a single run's state, so
    one loop serves both."""
    if not isinstance(state, PopulationState):
        yield None, state
        return
    for index in range(count(state)):
        yield index, member(state, index)


def name(index: int | None, metric: str) -> str:
    """`key` for a member, the name itself for a single run (index None)."""
    return metric if index is None else key(index, metric)


def member(state: PopulationState, index: int) -> Any:
    """Member `index`'s state: the family's state, as a single run's."""
    return jax.tree.map(lambda x: x[index], state.members)


def count(state: PopulationState) -> int:
    return int(state.seeds.shape[0])


def check_member(index: int, members: int) -> None:
    """Refuses a member index outside 0 .. members-1 in one line."""
    if not 0 <= index < members:
        raise UserError(f"member {index} is out of range: this population has {members} "
                        f"members (0 to {members - 1}); set --member to one of them")


def best(scores: Sequence[float | None], *, lower_is_better: bool) -> int | None:
    """The index of the best finite score (the first on a tie), None if there is none."""
    valid = [(s if lower_is_better else -s, i) for i, s in enumerate(scores)
             if s is not None and math.isfinite(s)]
    return min(valid)[1] if valid else None


def best_entry(spec: Spec, scores: Sequence[float | None], *, by: str,
               lower_is_better: bool) -> dict[str, Any] | None:
    """summary.json's "best": the member, the score it was chosen by and its settings."""
    index = best(scores, lower_is_better=lower_is_better)
    if index is None:
        return None
    return {"member": index, "by": by, "value": float(scores[index]),
            "lower_is_better": lower_is_better, "settings": spec.settings(index),
            "scores": [None if s is None else float(s) for s in scores]}


def log_best(entry: dict[str, Any] | None, what: str) -> None:
    if entry is None:
        log.info("no member could be ranked: no %s was computed", what)
        return
    log.info("best member: %d (%s %.6g; %s)", entry["member"], entry["by"], entry["value"],
             ", ".join(f"{k} {v:g}" for k, v in entry["settings"].items()))


# ----------------------------------------------------------------------------- memory


# The check asks for this many times the estimate. The estimate counts the train step's
# buffers as XLA plans them; the peak resident memory of whole CPU runs grew by up to about 3x
# that per member (the MNIST classifier: 2x without its evaluation, 3x with it; the MNIST DCGAN
# by less than the estimate; docs/populations.md).
HEADROOM = 3.0


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or shape/dtype struct) in a tree."""
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree)))


def estimate(members: int, member_bytes: int, shared_bytes: int, copies: int) -> int:
    """Bytes a population step needs: `copies` devices sharing one memory (CPU devices share
    the host's), each holding the batch (`shared_bytes`) and every member's state, gradients
    and activations (`member_bytes`). Linear in the member count."""
    return copies * (shared_bytes + members * member_bytes)


def check_fits(members: int, member_bytes: int, shared_bytes: int, copies: int,
               available: int | None, headroom: float = HEADROOM) -> int:
    """The estimate; a UserError naming the member count that fits when `headroom` times it
    exceeds `available` (None: unknown, nothing refused)."""
    needed = estimate(members, member_bytes, shared_bytes, copies)
    if available is None or needed * headroom <= available:
        return needed
    fits = max(int((available / headroom / copies - shared_bytes) // max(member_bytes, 1)), 0)
    raise UserError(
        f"a population of {members} members needs about {_gb(needed)} ({_gb(member_bytes)} "
        f"per member on each of {copies} device(s)), {headroom:g}x that with headroom, but "
        f"{_gb(available)} is available; set "
        f"--config.population.members to {fits} or fewer, use fewer devices or a smaller batch "
        "(or --config.population.memory_check=False to try anyway)")


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def available_memory(device) -> tuple[int | None, int]:
    """(free bytes, devices sharing them): an accelerator's own memory, else the host's
    (psutil when installed, else sysconf) shared by all of this process's CPU devices."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), 1
    copies = sum(1 for d in jax.local_devices() if d.platform == device.platform)
    try:
        import psutil

        return int(psutil.virtual_memory().available), copies
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), copies
    except (ValueError, OSError, AttributeError):
        return None, copies


def member_step_bytes(train_step: Callable, abstract_state: Any,
                      abstract_batch: dict) -> tuple[int, int]:
    """(bytes per member, batch bytes) of one device's step, from XLA's memory analysis of one
    member's step compiled for one device: its state in and out (donated), its temporaries
    (activations, gradients) and the batch."""
    from common_jax.parallel import DataParallel

    dp = DataParallel("shard_map", [jax.local_devices()[0]])
    compiled = dp.compile(train_step).lower(abstract_state, abstract_batch).compile()
    stats = compiled.memory_analysis()
    batch = tree_bytes(abstract_batch)
    if stats is None:  # the backend keeps no analysis: state, new state, gradients
        return 3 * tree_bytes(abstract_state), batch
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    return max(int(total) - batch, 0), batch


def record_memory(config: ml_collections.ConfigDict, create_member: Callable,
                  train_step: Callable, summary: dict) -> None:
    """`check_memory` for a family's config (its batch and image shape, every device); the
    figures go into summary["population"]["memory"]."""
    memory = check_memory(config, create_member, train_step, batch_size=config.batch_size,
                          image_size=config.model.image_size, channels=config.model.channels,
                          num_devices=jax.device_count())
    if memory is not None:
        summary["population"]["memory"] = memory


def check_memory(config: ml_collections.ConfigDict, create_member: Callable,
                 train_step: Callable, *, batch_size: int, image_size: int,
                 channels: int, num_devices: int) -> dict[str, Any] | None:
    """Estimates the population's memory from one member's step (linear in K) and refuses it
    when it exceeds what is available; returns the figures for summary.json (None when off)."""
    p = section(config)
    if not enabled(config) or not p.memory_check:
        return None
    one = member_config(config, 0)
    abstract = jax.eval_shape(lambda: create_member(one))
    local = max(batch_size // num_devices, 1)
    batch = {"image": jax.ShapeDtypeStruct((local, image_size, image_size, channels),
                                           jnp.float32),
             "label": jax.ShapeDtypeStruct((local,), jnp.int32)}
    step = _bound(train_step, ml_collections.FrozenConfigDict(one))
    member_bytes, shared = member_step_bytes(step, abstract, batch)
    available, copies = available_memory(jax.local_devices()[0])
    copies = min(copies, num_devices)
    needed = check_fits(size(config), member_bytes, shared, copies, available)
    figures = {"estimated_bytes": needed, "bytes_per_member_per_device": member_bytes,
               "batch_bytes_per_device": shared, "devices_sharing_memory": copies,
               "available_bytes": available}
    log.info("population of %d: about %s estimated (%s per member per device), %s available",
             size(config), _gb(needed), _gb(member_bytes),
             _gb(available) if available is not None else "unknown")
    return figures
