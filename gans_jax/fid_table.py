"""Inception FID and KID of several GAN runs under one protocol, beside the data's floor.

    python -m gans_jax.fid_table --workdir runs/progan_anime --workdir runs/dcgan_anime \
        --num 10000 --out docs/progan/anime_fid.json

Each run's EMA generator draws --num samples from fixed latent vectors at its latest
checkpoint. All runs are compared with **every** image of one reference set: the first run's
`data` section and split, at its image size (e.g. all 19,992 anime faces; `train.py eval`
compares with a random subset as large as the sample count instead). The floor is that
reference set split into two random halves scored against each other: how far apart two
samples of the real distribution are at that size, the best a generator could hope for.

The reference features are computed once and cached (`common_jax.metrics.gan_metrics`). The
JSON table holds every score with its protocol, each checkpoint's step and images shown, and
how long each part took on this machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from common_jax.errors import UserError

log = logging.getLogger(__name__)

FLOOR_SEED = 0  # the random halves of the floor
REFERENCE_SEED = 0  # the order the reference images are read in (all of them are used)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", action="append", required=True,
                        help="a GAN run directory (repeat for several runs)")
    parser.add_argument("--num", type=int, default=10_000, help="samples per run")
    parser.add_argument("--batch", type=int, default=250, help="images per batch")
    parser.add_argument("--kid_subsets", type=int, default=100)
    parser.add_argument("--kid_subset_size", type=int, default=1000)
    parser.add_argument("--out", default="", help="write the table here (.json)")
    args = parser.parse_args(argv)
    if args.num < 2:
        raise UserError(f"--num must be at least 2 (a covariance needs 2 samples), got {args.num}")
    missing = [w for w in args.workdir if not (Path(w) / "checkpoints").is_dir()]
    if missing:
        raise UserError(f"no checkpoints in {missing[0]}; give the --workdir of a trained GAN "
                        "run")
    return args


def load_run(workdir: str):
    """(config, state, trainer) of a run's latest checkpoint; refuses runs that do not sample."""
    from common_jax.checkpoint import restore_for_inference

    config, state, trainer = restore_for_inference(
        workdir, lambda c: importlib.import_module(c.trainer))
    if not hasattr(trainer, "generate_batches"):
        raise UserError(f"{workdir} holds a {config.trainer} run, which does not generate "
                        "images; give the --workdir of a GAN run")
    return config, state, trainer


def images_shown(config, trainer, step: int) -> int:
    """Training images the discriminator has seen by `step` (a growing GAN's batch varies)."""
    if hasattr(trainer, "images_shown"):
        return int(trainer.images_shown(config, step))
    return int(step) * int(config.batch_size)


def reference(network, config, args) -> tuple[Any, float]:
    """Features of every image of the run's data split at its image size (cached)."""
    from common_jax import data as data_lib
    from common_jax.metrics import gan_metrics as gm

    source = data_lib.load_source(config.data, split=config.data.split)
    num = source.num_examples
    if num < 4:
        raise UserError(f"'{source.name}' has {num} images, too few for a floor in two halves")
    m = config.model

    def batches():
        iterator = data_lib.make_train_iterator(
            source, batch_size=min(args.batch, num), image_size=m.image_size,
            channels=m.channels, seed=REFERENCE_SEED)
        return (batch["image"] for batch in iterator)

    name = source.name.removesuffix(f" ({config.data.split})")
    start = time.perf_counter()
    ref = gm.reference_statistics(network, name, config.data.split, batches, num_samples=num,
                                  batch_size=args.batch, keep_features=True)
    return ref, 0.0 if ref.from_cache else time.perf_counter() - start


def floor(features: np.ndarray, args) -> dict[str, Any]:
    """FID and KID between two random halves of the real features."""
    from common_jax.metrics import frechet_distance
    from common_jax.metrics import gan_metrics as gm

    order = np.random.default_rng(FLOOR_SEED).permutation(len(features))
    half = len(features) // 2
    a, b = features[order[:half]], features[order[half:2 * half]]
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a.astype(np.float64),
                                                            b.astype(np.float64))]
    kid_mean, kid_std = gm.kernel_inception_distance(
        a, b, num_subsets=args.kid_subsets, subset_size=min(args.kid_subset_size, half))
    return {"fid": float(frechet_distance(*stats[0], *stats[1])), "kid_mean": kid_mean,
            "kid_std": kid_std, "n_each": half}


def score_run(network, ref, workdir: str, args) -> dict[str, Any]:
    from common_jax.metrics import gan_metrics as gm

    config, state, trainer = load_run(workdir)
    step = int(state.step)
    start = time.perf_counter()
    samples = trainer.generate_batches(state, config, args.num, batch_size=args.batch)
    result = gm.evaluate(network, samples, ref, num_samples=args.num, metrics=("fid", "kid"),
                         batch_size=args.batch, kid_subsets=args.kid_subsets,
                         kid_subset_size=args.kid_subset_size)
    result.update(workdir=str(workdir), trainer=config.trainer, step=step,
                  images_shown=images_shown(config, trainer, step),
                  seconds=time.perf_counter() - start)
    return result


def check_same_images(configs: list, workdirs: list[str]) -> None:
    first = configs[0].model
    for config, workdir in zip(configs[1:], workdirs[1:], strict=True):
        m = config.model
        if (m.image_size, m.channels) != (first.image_size, first.channels):
            raise UserError(f"{workdir} makes {m.image_size}x{m.image_size}x{m.channels} images "
                            f"but {workdirs[0]} {first.image_size}x{first.image_size}x"
                            f"{first.channels}; compare runs of one image size")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from common_jax import parallel
    from common_jax.metrics import gan_metrics as gm

    parallel.use_cpu_cores(())  # before any device exists; batches pad to the device count
    configs = [load_run(w)[0] for w in args.workdir]
    check_same_images(configs, args.workdir)
    network = gm.load_feature_network()
    ref, ref_seconds = reference(network, configs[0], args)
    table = {"reference": {**gm.protocol(network, ref, n_fake=0), "seconds": ref_seconds,
                           "cached": ref.from_cache},
             "floor": floor(ref.features, args), "runs": []}
    table["reference"].pop("n_fake")
    log.info("floor (two halves of %d): FID %.3f", len(ref.features), table["floor"]["fid"])
    for workdir in args.workdir:
        result = score_run(network, ref, workdir, args)
        log.info("%s step %d: FID %.3f, KID %.5f (%.0f s)", workdir, result["step"],
                 result["fid"], result["kid_mean"], result["seconds"])
        table["runs"].append(result)
    return table


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        args = parse_args(argv)
        table = run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    text = json.dumps(table, indent=1, default=float)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}")
    print(f"floor (halves of {2 * table['floor']['n_each']} real images): "
          f"FID {table['floor']['fid']:.2f}, KID {table['floor']['kid_mean']:.4f}")
    for r in table["runs"]:
        print(f"{r['workdir']}: step {r['step']}, {r['images_shown']:,} images shown, "
              f"FID {r['fid']:.2f}, KID {r['kid_mean']:.4f} ± {r['kid_std']:.4f}")


if __name__ == "__main__":
    main()
