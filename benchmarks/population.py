"""Populations: K models trained in one vmapped step beside K single-model steps run one after
another (`common_jax.population`, docs/populations.md).

    python -m benchmarks.population                   # dcgan_mnist and cls_mnist, K = 1, 2, 4, 8
    python -m benchmarks.population --only cls_mnist --members 1,2,4 --repeats 5
    python -m benchmarks.population --tiny            # smoke-size models, K = 1, 2: seconds

For each model and member count K, two contestants train K models per step on one synthetic
batch already on the devices:
  population_K  the config with ``population.members = K`` (seeds 0 .. K-1), its state and step
                built as the training loop builds them (`benchmarks.train_step.JaxStep`: the
                trainer's `make_task`, `DataParallel.compile`, compiled ahead of time);
  separate_K    the single config's compiled step applied to K states (seeds 0 .. K-1) one
                after another: what K separate runs would do, without their processes.
Both count K x batch images per step. After a warm-up, rounds alternate between every
contestant of a model, so that load from other processes falls on all of them alike. Reported
per contestant: images/s and ms/step as mean ± std over the rounds, compile time; for the
population also XLA's memory analysis (how the step's memory grows with K); per K the ratio of
the population's images/s to the separate steps' (above 1: the population is faster) and the
population's milliseconds per member. Writes benchmarks/results/population_<tag>.json.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

import jax
import ml_collections

from benchmarks import common
from benchmarks.train_step import JaxStep
from common_jax.parallel import MODES

DEFAULT_MODELS = ["dcgan_mnist", "cls_mnist"]
DEFAULT_MEMBERS = (1, 2, 4, 8)


def with_population(config: ml_collections.ConfigDict, members: int) -> ml_collections.ConfigDict:
    """The config as a population of `members` seeds (0 .. K-1); no memory check, which would
    compile a step of its own."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.population.members = members
    c.population.seeds = ",".join(str(seed) for seed in range(members))
    c.population.memory_check = False
    return c


def with_seed(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = seed
    return c


class Separate:
    """K single-model states stepped one after another by one compiled single-model step."""

    def __init__(self, step: JaxStep, members: int):
        trainer = importlib.import_module(step.config.trainer)
        self.step = step
        self.states = [step.dp.put_state(trainer.create_state(with_seed(step.config, seed)))
                       for seed in range(members)]

    def run(self, n: int) -> None:
        metrics = None
        for _ in range(n):
            for k, state in enumerate(self.states):
                self.states[k], metrics = self.step.compiled(state, self.step.batch)
        jax.block_until_ready((self.states, metrics))


def contestants(config, members: int, args, single: JaxStep, log=print
                ) -> tuple[common.Contestant, common.Contestant]:
    """(population_K, separate_K) for one member count."""
    images = members * common.batch_size(config)
    population = JaxStep(with_population(config, members), devices=args.devices,
                         mode=args.parallel)
    log(f"  K={members}: population compile {population.compile_s:.1f} s")
    together = common.Contestant(f"population_{members}", population.run, images, {
        "devices": population.dp.num_devices, "parallel": population.dp.mode,
        "compile_s": round(population.compile_s, 2), "xla_memory": population.memory()})
    apart = common.Contestant(f"separate_{members}", Separate(single, members).run, images, {
        "devices": single.dp.num_devices, "parallel": single.dp.mode,
        "compile_s": round(single.compile_s, 2)})
    return together, apart


def per_k(entry: dict[str, Any], members: tuple[int, ...]) -> dict[str, Any]:
    """For each K: population over separate images/s, and the population's ms per member."""
    out: dict[str, Any] = {}
    for k in members:
        together, apart = entry.get(f"population_{k}", {}), entry.get(f"separate_{k}", {})
        row: dict[str, Any] = {}
        if together.get("images_per_s") and apart.get("images_per_s"):
            row["population_over_separate"] = round(together["images_per_s"]
                                                    / apart["images_per_s"], 3)
        if together.get("ms_per_step"):
            row["population_ms_per_member"] = round(together["ms_per_step"] / k, 3)
        memory = together.get("xla_memory", {})
        if "temp_size_in_bytes" in memory:
            row["xla_argument_plus_temp_bytes"] = (memory.get("argument_size_in_bytes", 0)
                                                   + memory["temp_size_in_bytes"])
        out[str(k)] = row
    return out


def measure_model(config, args, log=print) -> dict[str, Any]:
    """Every member count's two contestants, timed in alternating rounds."""
    single = JaxStep(config, devices=args.devices, mode=args.parallel)
    log(f"  single-model step compile {single.compile_s:.1f} s")
    timed: list[common.Contestant] = []
    for k in args.members:
        timed += contestants(config, k, args, single, log)
    for c in timed:
        common.warm_up(c, warmup=args.warmup, steps=args.steps, round_seconds=args.round_seconds)
    common.alternate(timed, args.repeats, log)
    entry: dict[str, Any] = {"batch": common.batch_size(config),
                             "image_shape": [config.model.image_size] * 2
                             + [config.model.channels]}
    for c in timed:
        entry[c.name] = common.result(c)
        r = entry[c.name]
        log(f"  {c.name:14s} {r.get('images_per_s', 0):9.1f} ± "
            f"{r.get('images_per_s_std', 0):.1f} images/s  {r.get('ms_per_step', 0):9.1f} "
            "ms/step" + (f"  ({r['error']})" if "error" in r else ""))
    entry["per_members"] = per_k(entry, tuple(args.members))
    entry["peak_rss_mb_so_far"] = common.peak_rss_mb()
    return entry


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_model_args(parser, default=" and ".join(DEFAULT_MODELS))
    parser.add_argument("--members", default=None,
                        help="member counts K, comma-separated (default: 1,2,4,8; --tiny: 1,2)")
    parser.add_argument("--devices", type=int, default=0,
                        help="JAX devices for the step (0: as train.py, one per CPU core on a "
                             "CPU, else 1)")
    parser.add_argument("--parallel", choices=MODES, default="shard_map")
    common.add_common_args(parser)
    args = common.shrink_if_tiny(parser.parse_args(argv))
    if args.members is None:
        args.members = "1,2" if args.tiny else ",".join(map(str, DEFAULT_MEMBERS))
    try:
        args.members = tuple(int(k) for k in args.members.split(","))
    except ValueError:
        parser.error(f"--members takes comma-separated counts, e.g. 1,2,4; got {args.members}")
    if not args.members or min(args.members) < 1:
        parser.error("--members needs counts of at least 1")
    return args


def main(argv=None, *, reexec: bool = False) -> dict:
    args = parse_args(argv)
    common.choose_devices(args, reexec=reexec)
    record = common.header("population", args)
    record["results"] = {}
    for name, spec, config in common.model_configs(args, DEFAULT_MODELS):
        print(f"{name} ({spec}, batch {common.batch_size(config)}, K = "
              f"{', '.join(map(str, args.members))})")
        record["results"][name] = {"config": spec, **measure_model(config, args),
                                   "config_values": common.config_values(config)}
    record["peak_rss_mb"] = common.peak_rss_mb()
    common.write_record(record, args)
    return record


if __name__ == "__main__":
    main(reexec=True)
