"""ResNet50 ImageNet features for small image data sets (CIFAR-10), and a linear head on them.

    python -m classifiers_jax.transfer --resolution 64 128 [--out probe.json]
    python -m classifiers_jax.transfer --resolution 128 224 --combine   # also both side by side
    python -m classifiers_jax.transfer --resolution 128 --blocks stage4_5   # + stage 4's output
    python -m classifiers_jax.transfer --resolution 128 --blocks stage4_5:2x2   # by quadrant
    python -m classifiers_jax.transfer --config classifiers_jax/configs/resnet50_cifar10.py \
        --resolution 224 --split-limit 2000      # a quick look on the first examples

The backbone is frozen: batch norm in inference mode (ImageNet's running statistics), no head.
Each image goes through the project's loader, bilinearly resized (32 px CIFAR images are
upsampled) to the resolution asked for, then into the network, which applies the weights'
preprocessing itself (Keras "caffe": BGR, ImageNet channel means subtracted). The pooled
2048-d features of a whole split are computed once and cached, named by the weights' sha256,
the data, the split and the resolution:

    $COMMON_JAX_CACHE (or ~/.cache/common_jax) / features / resnet50-<sha>-<data>-<split>-<R>px.npz

with `features`, `labels` and a `protocol` (JSON: weights file and sha256, data, split,
resolution, examples, extraction time and images/s on this machine). The same .npz is what
`train.py features` writes, and `common_jax.linear_probe` reads it.

For each resolution, the command extracts (or reuses) train and test features and fits the
linear probe (softmax regression, L-BFGS, L2 strength chosen on a held-out part of the
training split) on the whole training split, reporting accuracy on the whole test split;
`--combine` adds one probe on all resolutions' features side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "classifiers_jax/configs/resnet50_cifar10.py"
FEATURE_BATCH = 32  # images per forward pass (over all devices); memory grows with R^2


def cache_root() -> Path:
    from common_jax import cache

    return cache.root() / "features"


def data_name(config: ml_collections.ConfigDict) -> str:
    """A short name of the data a config reads, for file names (the archive or TFDS name)."""
    path = str(config.data.get("path", "") or "")
    if path and Path(path).exists():
        name = Path(path).name
        for suffix in (".tar.gz", ".tgz", ".tar"):
            name = name.removesuffix(suffix)
        return name
    return str(config.data.get("tfds_name", "") or "data").replace("/", "_")


def cache_path(sha256: str, data: str, split: str, resolution: int,
               limit: int | None = None, preprocess: str = "caffe",
               blocks: tuple[str, ...] = ()) -> Path:
    """The cache file of one feature set. Everything that changes the features is in the
    name: the weights, data, split, resolution, and the input preprocessing when it is not
    the Keras weights' own "caffe" (files made before that was named are all "caffe"), and the
    blocks whose pooled outputs follow the final features."""
    part = f"-first{limit}" if limit else ""
    mode = "" if preprocess == "caffe" else f"-{preprocess}"
    extra = "".join(f"-{b.replace(':', '-')}" for b in blocks)
    return (cache_root()
            / f"resnet50-{sha256[:12]}-{data}-{split}{part}-{resolution}px{mode}{extra}.npz")


def save_features(path: Path, features: np.ndarray, labels: np.ndarray,
                  protocol: dict[str, Any]) -> None:
    """Writes the .npz atomically (a half-written cache file would be read as valid)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    np.savez(tmp, features=features, labels=labels, protocol=json.dumps(protocol))
    tmp.replace(path)


def load_features(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        return data["features"], data["labels"], json.loads(str(data["protocol"]))


def block_names() -> list[str]:
    """The ResNet50's residual blocks by module name: stage2_0 ... stage5_2."""
    from classifiers_jax.models.resnet import STAGES

    return [f"stage{stage}_{i}" for stage, _, blocks in STAGES for i in range(blocks)]


MAX_GRID = 4  # regions per side of a block's pooling grid (--blocks stage4_5:2x2)


def parse_block(spec: str) -> tuple[str, int]:
    """A --blocks entry -> (block name, grid): 'stage4_5' pools the block's whole map (grid 1),
    'stage4_5:2x2' pools each of a 2 x 2 grid of regions, which keeps where in the image a
    feature fired (frozen stage-4 maps are 8 x 8 at 128 px)."""
    from common_jax.errors import UserError

    name, _, grid = spec.partition(":")
    if not grid:
        return name, 1
    rows, _, cols = grid.partition("x")
    if not (rows.isdigit() and rows == cols and 1 <= int(rows) <= MAX_GRID):
        raise UserError(f"block '{spec}': give a square grid of regions after the name, "
                        f"NxN with N from 1 to {MAX_GRID}, e.g. {name}:2x2")
    return name, int(rows)


def check_blocks(blocks) -> tuple[str, ...]:
    from common_jax.errors import UserError

    names = block_names()
    canonical = []
    for block in blocks:
        name, grid = parse_block(block)
        if name not in names:
            raise UserError(f"no ResNet50 block '{name}'; name the last block of a stage "
                            f"(stage2_2, stage3_3, stage4_5) or any of {names[0]} ... {names[-1]}")
        canonical.append(name if grid == 1 else f"{name}:{grid}x{grid}")  # 1x1 is the plain name
    return tuple(canonical)


def grid_pool(maps, grid: int):
    """[B, H, W, C] -> [B, grid * grid * C]: the mean of each of grid x grid regions, row by
    row (region i spans rows floor(i H / grid) to ceil((i + 1) H / grid), as adaptive average
    pooling does); grid 1 is global average pooling."""
    import jax.numpy as jnp

    height, width = maps.shape[1:3]
    edges = lambda size, i: (i * size // grid, -(-(i + 1) * size // grid))  # noqa: E731
    regions = []
    for i in range(grid):
        top, bottom = edges(height, i)
        for j in range(grid):
            left, right = edges(width, j)
            regions.append(jnp.mean(maps[:, top:bottom, left:right], axis=(1, 2)))
    return jnp.concatenate(regions, axis=-1)


def feature_function(model, dp, blocks: tuple[str, ...] = ()):
    """Pooled features of a batch, per device: the frozen network in inference mode. With
    `blocks`, each named block's output, average-pooled (over the whole map, or over each
    region of the grid its spec names), follows the final 2048 features."""
    import jax.numpy as jnp

    specs = [parse_block(b) for b in blocks]
    wanted = {name for name, _ in specs}

    def fn(variables, batch):
        if not blocks:
            return model.apply(variables, batch["image"], train=False, features_only=True)
        features, state = model.apply(
            variables, batch["image"], train=False, features_only=True,
            capture_intermediates=lambda module, _: module.name in wanted,
            mutable=["intermediates"])
        found = state["intermediates"]
        pooled = [grid_pool(found[name]["__call__"][0], grid) for name, grid in specs]
        return jnp.concatenate([features, *pooled], axis=-1)

    return dp.forward(fn, key=("resnet50-features", model, blocks))


def split_features(model, variables, config: ml_collections.ConfigDict, split: str, *,
                   limit: int | None = None, batch_size: int = FEATURE_BATCH,
                   blocks: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(pooled features [N, 2048 + the blocks' widths], labels [N], timing) of a whole split
    through `model` (a ResNet50) in inference mode, at config.model.image_size."""
    import jax

    from common_jax import data as data_lib
    from common_jax.parallel import DataParallel

    source = data_lib.load_source(config.data, split=split)
    if limit:
        source = _first(source, limit)
    dp = DataParallel("shard_map", jax.local_devices())
    forward = feature_function(model, dp, blocks)
    params = dp.put_replicated(jax.tree.map(np.asarray, variables))
    batches = data_lib.make_eval_iterator(source, batch_size=dp.round_up(batch_size),
                                          image_size=int(config.model.image_size), channels=3)
    start, chunks, labels = time.perf_counter(), [], []
    for batch in batches:
        out = np.asarray(jax.device_get(forward(params, dp.put_split({"image": batch["image"]}))))
        keep = batch["mask"] > 0
        chunks.append(out[keep])
        labels.append(batch["label"][keep])
    seconds = time.perf_counter() - start
    labels = np.concatenate(labels)
    timing = {"seconds": round(seconds, 1), "images_per_s": round(len(labels) / seconds, 1),
              "devices": dp.num_devices, "date": time.strftime("%Y-%m-%d")}
    return np.concatenate(chunks).astype(np.float32), labels, timing


def extract(config: ml_collections.ConfigDict, split: str, *, limit: int | None = None,
            batch_size: int = FEATURE_BATCH, blocks: tuple[str, ...] = ()
            ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(features [N, 2048 + ...], labels [N], protocol) of the pretrained backbone on a whole
    split at config.model.image_size, with the pooled outputs of `blocks` after the final
    features; from the cache when they were computed before."""
    from classifiers_jax import resnet_weights

    resolution = int(config.model.image_size)
    preprocess = config.model.get("preprocess", "caffe")
    variables, meta = resnet_weights.load_resnet50(config.model.get("weights") or None)
    blocks = check_blocks(blocks)
    path = cache_path(meta["sha256"], data_name(config), split, resolution, limit, preprocess,
                      blocks)
    if path.is_file():
        log.info("features from the cache: %s", path)
        return load_features(path)

    model = resnet_weights.model_for(meta, preprocess=preprocess)
    features, labels, timing = split_features(model, variables, config, split, limit=limit,
                                              batch_size=batch_size, blocks=blocks)
    protocol = {"network": "resnet50", "weights": meta["path"], "weights_sha256": meta["sha256"],
                "layout": meta["layout"], "data": data_name(config), "split": split,
                "examples": int(len(labels)), "resolution": resolution, "preprocess": preprocess,
                "resize": "bilinear (antialiased when shrinking), centre square crop",
                "batch_norm": "inference (ImageNet running statistics)",
                "features": ["pooled final (2048)", *map(describe_block, blocks)], **timing}
    save_features(path, features, labels, protocol)
    log.info("%s %s at %d px: %d examples in %.0f s (%.1f images/s) -> %s", data_name(config),
             split, resolution, len(labels), timing["seconds"], timing["images_per_s"], path)
    return features, labels, protocol


def describe_block(spec: str) -> str:
    name, grid = parse_block(spec)
    return f"pooled {name}" if grid == 1 else f"pooled {name} over a {grid}x{grid} grid"


def _first(source, limit: int):
    """The first `limit` examples of a source (quick looks; named in the cache file)."""
    import dataclasses

    cut = lambda x: None if x is None else x[:limit]  # noqa: E731
    return dataclasses.replace(source, images=cut(source.images), paths=cut(source.paths),
                               labels=cut(source.labels))


def probe(config: ml_collections.ConfigDict, resolution: int | tuple[int, ...], *,
          limit: int | None = None, l2: float | str = "auto", optimizer: str = "lbfgs",
          val_fraction: float = 0.1, blocks: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train and test features at `resolution`, then the linear probe on them: with
    l2="auto", the L2 strength is chosen on a held-out `val_fraction` of the training split
    (`common_jax.linear_probe.tune_linear_probe`) before the fit on the whole of it.

    Several resolutions (a tuple) give one probe on their features side by side (2048 per
    resolution): the same frozen network seeing each image at two scales, still one linear
    layer on top. `blocks` adds those blocks' pooled outputs at every resolution."""
    from common_jax import linear_probe

    resolutions = (resolution,) if isinstance(resolution, int) else tuple(resolution)
    train_x, train_y, train_p = _features_at(config, config.data.split, resolutions, limit,
                                             blocks)
    test_x, test_y, test_p = _features_at(config, config.data.eval_split, resolutions, limit,
                                          blocks)
    num_classes = int(config.model.num_classes)
    if l2 == "auto":
        result = linear_probe.tune_linear_probe(train_x, train_y, test_x, test_y,
                                                num_classes=num_classes, optimizer=optimizer,
                                                val_fraction=val_fraction)
    else:
        result = linear_probe.fit_linear_probe(train_x, train_y, test_x, test_y,
                                               num_classes=num_classes, optimizer=optimizer,
                                               l2=float(l2))
    name = resolutions[0] if len(resolutions) == 1 else "+".join(map(str, resolutions))
    return {"resolution": name, "blocks": list(blocks), "test_accuracy": result["test_accuracy"],
            "train_accuracy": result["train_accuracy"], "probe": result,
            "train_features": train_p, "test_features": test_p}


def _features_at(config, split: str, resolutions: tuple[int, ...], limit: int | None,
                 blocks: tuple[str, ...] = ()):
    """(features of every resolution side by side, labels, protocol or list of protocols)."""
    from common_jax.errors import UserError

    parts = []
    for resolution in resolutions:
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.image_size = resolution
        parts.append(extract(config, split, limit=limit, blocks=blocks))
    labels = parts[0][1]
    for _, other, _ in parts[1:]:
        if not np.array_equal(other, labels):  # the loader's order is fixed; a cache is not
            raise UserError(f"{split} features of {resolutions} px list their examples in "
                             "different orders; delete the feature cache and extract again")
    features = np.concatenate([p[0] for p in parts], axis=1)
    protocols = [p[2] for p in parts]
    return features, labels, protocols[0] if len(protocols) == 1 else protocols


def parse_args(argv=None) -> argparse.Namespace:
    from common_jax.linear_probe import l2_arg

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="a resnet50 classifier config "
                        "(its data, eval split, weights and preprocessing are used)")
    parser.add_argument("--resolution", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--split-limit", type=int, default=None,
                        help="only the first N examples of each split (a quick look)")
    parser.add_argument("--l2", type=l2_arg, default="auto", help="the probe's L2 strength, "
                        "or 'auto': the best of common_jax.linear_probe.L2_GRID on a held-out "
                        "part of the training split (default)")
    parser.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs",
                        help="lbfgs: full batch to convergence (default); adam: 30 epochs of "
                        "minibatches, the probe's former setting")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="the part of the training split held out to choose the L2 strength")
    parser.add_argument("--blocks", nargs="+", default=[], metavar="BLOCK", help="also the "
                        "average-pooled outputs of these residual blocks (e.g. stage4_5, the "
                        "last of stage 4), after the final 2048 features; BLOCK:2x2 pools "
                        "each region of a 2 x 2 grid instead of the whole map")
    parser.add_argument("--combine", action="store_true", help="also one probe on the "
                        "features of all --resolution values side by side")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path.py[:variant]` -> its config (as --config reads it)."""
    import importlib.util

    from common_jax.errors import UserError

    path, _, variant = spec.partition(":")
    if not Path(path).is_file():
        raise UserError(f"config file '{path}' not found; give --config path.py[:variant]")
    spec_ = importlib.util.spec_from_file_location("transfer_config", path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module.get_config(variant or None)


def main(argv=None) -> int:
    from common_jax.errors import UserError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        from common_jax import parallel

        parallel.use_cpu_cores(())  # one CPU device per core: the forward is split over them
        config = load_config(args.config)
        results = []
        runs: list = list(args.resolution)
        if args.combine and len(args.resolution) > 1:
            runs.append(tuple(args.resolution))
        for resolution in runs:
            result = probe(config, resolution, limit=args.split_limit, l2=args.l2,
                           optimizer=args.optimizer, val_fraction=args.val_fraction,
                           blocks=tuple(args.blocks))
            extra = "".join(f" + {b}" for b in args.blocks)
            print(f"{result['resolution']:>4} px{extra}: linear probe test accuracy "
                  f"{result['test_accuracy']:.4f} (train {result['train_accuracy']:.4f}, "
                  f"l2 {result['probe']['settings']['l2']:g}, "
                  f"{result['probe']['feature_dim']} features)")
            results.append(result)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
