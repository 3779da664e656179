"""Baselines for the autoencoder's measurements.

- Bicubic: each test image is downsampled to the largest s x s x C that stores at most k
  values (s = floor(sqrt(k / C))), with an antialiased bicubic filter, then bicubic-upsampled
  back; scored like the autoencoder (MSE, PSNR, SSIM per image in the [0, 1] range, the mean
  over the whole split). The small image is kept in float32, as the autoencoder's latent is.
- Features for the linear probe (`common_jax.linear_probe`) that need no training: raw pixels
  (the [-1, 1] image flattened) and the encoder of a run's architecture at its random
  initialisation.

    python -m autoencoders_jax.baselines bicubic --config autoencoders_jax/configs/cifar10.py \
        --sizes 64,128,256,384 [--out bicubic.json]
    python -m autoencoders_jax.baselines features --kind pixels|random --workdir RUN \
        --split train --out FILE.npz
    python -m autoencoders_jax.baselines grid --workdirs RUN1,RUN2 --out grid.png

`grid` draws the first --num test images (top row), then for each run its reconstructions and
the bicubic round trip at the same number of stored values, one row each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common_jax.errors import UserError  # noqa: E402


def bicubic_side(k: int, channels: int = 3) -> int:
    """The largest side s with s * s * channels <= k stored values."""
    side = math.isqrt(k // channels)
    if side < 1:
        raise UserError(f"{k} values cannot hold even a 1x1 image of {channels} channels; use "
                        f"--sizes of at least {channels}")
    return side


def bicubic_roundtrip(images, side: int):
    """[N, S, S, C] in [-1, 1] -> downsampled to side x side (antialiased bicubic) and
    bicubic-upsampled back to S x S, clipped to [-1, 1]."""
    import jax
    import jax.numpy as jnp

    n, size, _, c = images.shape
    small = jax.image.resize(images, (n, side, side, c), "bicubic", antialias=True)
    return jnp.clip(jax.image.resize(small, (n, size, size, c), "bicubic"), -1.0, 1.0)


def bicubic_quality(config, sizes: list[int]) -> dict[str, dict]:
    """Mean MSE / PSNR / SSIM ([0, 1] range) of the bicubic round trip over the config's
    whole evaluation split, for each number of stored values in `sizes`."""
    import jax

    from autoencoders_jax.trainers.autoencoder import quality
    from common_jax import data as data_lib

    m = config.model
    source = data_lib.load_source(config.data, split=config.data.eval_split)
    sides = {k: bicubic_side(k, m.channels) for k in sizes}

    @jax.jit
    def sums(images, mask):
        out = {}
        for k, side in sides.items():
            q = quality(images, bicubic_roundtrip(images, side))
            out[k] = {name: (v * mask).sum() for name, v in q.items()}
        return out

    totals, count = None, 0.0
    for batch in data_lib.make_eval_iterator(source, batch_size=500, image_size=m.image_size,
                                             channels=m.channels):
        s = jax.tree.map(lambda x: np.float64(x), sums(batch["image"], batch["mask"]))
        totals = s if totals is None else jax.tree.map(np.add, totals, s)
        count += float(batch["mask"].sum())
    return {str(k): {"side": sides[k], "stored_values": sides[k] ** 2 * m.channels,
                     **{name: float(v) / count for name, v in totals[k].items()},
                     "num_examples": int(count), "split": config.data.eval_split}
            for k in sizes}


def load_config(spec: str):
    """A config from ``file.py[:variant]``."""
    import importlib.util

    file, _, variant = spec.partition(":")
    if not Path(file).is_file():
        raise UserError(f"config file '{file}' not found; give --config a file in "
                        "autoencoders_jax/configs/")
    module_spec = importlib.util.spec_from_file_location(f"config_{Path(file).stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant or None)


def run_config(workdir: str):
    """The config a run saved (config.json in its workdir)."""
    import ml_collections

    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise UserError(f"no config.json in {workdir}; give the --workdir of an autoencoder run")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def baseline_features(kind: str, config, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Features without training: "pixels" (the image flattened) or "random" (the encoder of
    the config's architecture at its initialisation, seed config.seed)."""
    from autoencoders_jax.trainers import autoencoder
    from common_jax import data as data_lib

    m = config.model
    if kind == "random":
        features, labels = autoencoder.encode_split(autoencoder.create_state(config), config,
                                                    split)
        what = f"randomly initialised encoder ({m.latent_kind}, {m.latent_size} values)"
    elif kind == "pixels":
        source = data_lib.load_source(config.data, split=split)
        rows = [b["image"][b["mask"] > 0].reshape(-1, m.image_size**2 * m.channels)
                for b in data_lib.make_eval_iterator(source, batch_size=1000,
                                                     image_size=m.image_size,
                                                     channels=m.channels)]
        features, labels = np.concatenate(rows), source.labels.astype(np.int64)
        what = "raw pixels in [-1, 1]"
    else:
        raise UserError(f"unknown --kind '{kind}'; use pixels or random")
    protocol = {"features": what, "split": split, "resolution": m.image_size,
                "feature_dim": int(features.shape[1]), "num_examples": len(features)}
    return features, labels, protocol


def comparison_grid(workdirs: list[str], out: str, num: int = 10) -> Path:
    """Originals, then per run: its reconstructions and the bicubic round trip at its latent
    size; cells enlarged 3x."""
    import jax.numpy as jnp

    from autoencoders_jax.trainers import autoencoder
    from common_jax import data as data_lib
    from common_jax.checkpoint import restore_for_inference
    from common_jax.writers import image_grid

    rows, first = [], None
    for workdir in workdirs:
        config, state, _ = restore_for_inference(workdir, lambda _: autoencoder)
        m = config.model
        if first is None:
            source = data_lib.load_source(config.data, split=config.data.eval_split)
            first = autoencoder.spread_images(source, num, m.image_size, m.channels)
            rows.append(first)
        frozen = ml_collections_frozen(config)
        rows.append(np.asarray(autoencoder._reconstruct_jit(state, jnp.asarray(first), frozen)))
        side = bicubic_side(m.latent_size, m.channels)
        rows.append(np.asarray(bicubic_roundtrip(jnp.asarray(first), side)))
    cells = np.concatenate(rows).repeat(3, axis=1).repeat(3, axis=2)
    grid = image_grid(cells, columns=num)
    from PIL import Image

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    return Path(out)


def ml_collections_frozen(config):
    import ml_collections

    return ml_collections.FrozenConfigDict(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Autoencoder baselines (module docstring).")
    parser.add_argument("command", choices=("bicubic", "features", "grid"))
    parser.add_argument("--workdirs", help="grid: comma-separated runs, one row pair each")
    parser.add_argument("--config", default="autoencoders_jax/configs/cifar10.py",
                        help="bicubic: the config whose evaluation split is scored")
    parser.add_argument("--sizes", default="64,128,256,384", help="bicubic: stored values k")
    parser.add_argument("--kind", default="pixels", help="features: pixels or random")
    parser.add_argument("--workdir", help="features: the run whose architecture is used")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", help="bicubic: JSON; features: .npz")
    args = parser.parse_args(argv)
    try:
        from common_jax import parallel

        parallel.use_cpu_cores(())
        start = time.perf_counter()
        if args.command == "bicubic":
            sizes = [int(k) for k in args.sizes.split(",") if k]
            result = bicubic_quality(load_config(args.config), sizes)
            for k, r in result.items():
                print(f"k={k}: {r['side']}x{r['side']} ({r['stored_values']} values): PSNR "
                      f"{r['psnr']:.3f} dB, SSIM {r['ssim']:.4f}, MSE {r['mse']:.6f}")
            if args.out:
                Path(args.out).write_text(json.dumps(result, indent=2))
        elif args.command == "grid":
            if not args.workdirs or not args.out:
                raise UserError("grid needs --workdirs RUN1,RUN2 and --out FILE.png")
            path = comparison_grid(args.workdirs.split(","), args.out)
            print(f"wrote {path}")
        else:
            if not args.workdir or not args.out:
                raise UserError("features needs --workdir RUN and --out FILE.npz")
            features, labels, protocol = baseline_features(args.kind, run_config(args.workdir),
                                                           args.split)
            np.savez(args.out, features=features, labels=labels,
                     protocol=json.dumps(protocol))
            print(f"wrote {args.kind} features {features.shape} to {args.out}")
        print(f"{time.perf_counter() - start:.1f} s")
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
