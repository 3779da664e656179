"""GAN metrics on features with known answers, streaming statistics, data-parallel feature
extraction (8 devices == 1) and the reference-statistics cache. A tiny conv net stands in for
Inception (whose forward pass at 299x299 is too slow for these tests)."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import scipy.linalg

from common_jax.errors import UserError
from common_jax.metrics import feature_statistics, frechet_distance
from common_jax.metrics import gan_metrics as gm


class TinyNet(nn.Module):
    """Per-example features of [B, 8, 8, 3] pixel values, shaped like FIDInception's output."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), strides=2)(x / 128.0 - 1.0))
        return {"pool3": x.mean(axis=(1, 2)), "map": x.reshape(x.shape[0], -1)}


def tiny_network(seed=0, resize="bilinear"):
    module = TinyNet()
    variables = module.init(jax.random.key(seed), np.zeros((1, 8, 8, 3), np.float32))
    return gm.FeatureNetwork(module, variables, "tiny", f"hash{seed}", resize, image_size=8)


def images(n, seed=0, size=8, channels=3):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, channels)).astype(np.uint8)


# ---------------------------------------------------------------------------- Frechet distance

def test_frechet_distance_equals_the_closed_form_for_commuting_covariances():
    # Sigma = Q diag(a) Q^T with a shared rotation Q: the FD is the diagonal closed form
    # ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2, while the matrices are not diagonal.
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.randn(6, 6))
    a, b = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    mu1, mu2 = rng.randn(6), rng.randn(6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_sampled_gaussians_matches_scipy_and_the_truth():
    rng = np.random.RandomState(1)
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    x = rng.randn(20000, 3) * np.sqrt(a)
    y = rng.randn(20000, 3) * np.sqrt(b) + np.array([1.0, 0.0, -1.0])
    mu1, s1 = feature_statistics(x)
    mu2, s2 = feature_statistics(y)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    scipy_value = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
    truth = 2.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(scipy_value, rel=1e-9)
    assert got == pytest.approx(truth, abs=0.1)


# ------------------------------------------------------------------------ streaming statistics

def test_streaming_stats_equal_one_shot_statistics_and_merge():
    rng = np.random.RandomState(2)
    x = (rng.randn(203, 16) * rng.uniform(0.1, 3, 16) + 5.0).astype(np.float32)
    parts = np.split(x, [7, 64, 65, 150])
    stats = gm.StreamingStats()
    for part in parts[:3]:
        stats.update(part)
    rest = gm.StreamingStats().update(parts[3]).update(parts[4])
    stats.merge(rest)
    mu, sigma = feature_statistics(x)
    assert stats.count == 203
    np.testing.assert_allclose(stats.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(stats.cov, sigma, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------------------- KID

def _kid_by_definition(x, y):
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return xx + yy - 2 * xy


def test_kid_equals_the_unbiased_mmd_definition():
    rng = np.random.RandomState(3)
    x, y = rng.randn(12, 4), rng.randn(12, 4) + 0.5
    # One subset of all samples: a permutation of each set, which the MMD ignores.
    mean, std = gm.kernel_inception_distance(y, x, num_subsets=1, subset_size=12)
    assert mean == pytest.approx(_kid_by_definition(x, y), rel=1e-10)
    assert std == 0.0


def test_kid_is_zero_for_one_distribution_and_positive_for_shifted_ones():
    rng = np.random.RandomState(4)
    real, same = rng.randn(1500, 16), rng.randn(1500, 16)
    mean, std = gm.kernel_inception_distance(real, same, num_subsets=30, subset_size=400)
    assert abs(mean) < 3 * std
    mean, std = gm.kernel_inception_distance(real, same + 0.5, num_subsets=30, subset_size=400)
    assert mean > 10 * std > 0


# ------------------------------------------------------------------------------ Inception Score

def test_inception_score_known_values():
    # Confident and balanced over 5 classes in every split: IS = 5. Uniform: IS = 1.
    logits = np.full((100, 1008), -30.0)
    logits[np.arange(100), np.arange(100) % 5] = 30.0
    mean, std = gm.inception_score(logits, splits=10)
    assert mean == pytest.approx(5.0, rel=1e-6) and std < 1e-6
    assert gm.inception_score(np.zeros((50, 1008)), splits=5)[0] == pytest.approx(1.0)


# -------------------------------------------------------------------------- precision / recall

def test_precision_recall_of_toy_distributions():
    rng = np.random.RandomState(5)
    real = rng.randn(800, 2)
    assert gm.precision_recall(real, real) == (1.0, 1.0)  # identical sets
    precision, recall = gm.precision_recall(real, rng.randn(800, 2))
    assert precision > 0.85 and recall > 0.85  # one distribution, two samples
    assert gm.precision_recall(real, rng.randn(800, 2) + 50.0) == (0.0, 0.0)  # disjoint
    # Real covers [0, 2] x [0, 1]; fake only its left half: every fake is realistic, but half
    # the real data is never generated.
    wide = rng.uniform(0, 1, (1600, 2)) * [2.0, 1.0]
    left = rng.uniform(0, 1, (800, 2))
    precision, recall = gm.precision_recall(wide, left, block=100)
    assert precision > 0.95 and 0.4 < recall < 0.65


# ------------------------------------------------------------------------------ feature extraction

def test_extract_features_on_8_devices_equals_1_device_and_a_direct_apply():
    net = tiny_network()
    data = images(37)  # not a multiple of 8 nor of the batch: exercises the padding
    assert len(jax.devices()) == 8
    batches = [data[:5], data[5:30], data[30:]]  # any chunking of the stream
    eight = gm.extract_features(net.module, net.variables, batches, batch_size=12,
                                preprocess=net.preprocess)
    one = gm.extract_features(net.module, net.variables, data, batch_size=12,
                              devices=jax.devices()[:1], preprocess=net.preprocess)
    direct = net.module.apply(net.variables, net.preprocess(data))
    assert eight["pool3"].shape == (37, 6)
    for key in ("pool3", "map"):
        np.testing.assert_array_equal(eight[key], one[key])  # bitwise on CPU
        np.testing.assert_allclose(eight[key], np.asarray(direct[key]), rtol=1e-5, atol=1e-6)
    only = gm.extract_features(net.module, net.variables, data, batch_size=12,
                               preprocess=net.preprocess, outputs=["pool3"])
    assert set(only) == {"pool3"}


def test_take_and_rebatch_keep_every_row_in_order():
    stream = [np.arange(i, i + n) for i, n in ((0, 3), (3, 10), (13, 1), (14, 6))]
    assert [len(b) for b in gm._rebatch(stream, 4)] == [4, 4, 4, 4, 4]
    assert np.concatenate(list(gm.take(stream, 11))).tolist() == list(range(11))


# ------------------------------------------------------------------ reference cache and evaluate

def test_reference_statistics_cache_hits_and_misses_by_key(tmp_path):
    net = tiny_network()
    data = images(40, seed=1)
    calls = []

    def source():
        calls.append(1)
        return [data[:25], data[25:]]

    def ref(network=net, n=32, **kw):
        return gm.reference_statistics(network, "toy", "test", source, num_samples=n,
                                       batch_size=16, cache_dir=tmp_path, **kw)

    first = ref()
    assert not first.from_cache and first.path.is_file() and len(calls) == 1
    mu, sigma = feature_statistics(
        gm.extract_features(net.module, net.variables, data[:32], batch_size=16,
                            preprocess=net.preprocess)["pool3"])
    np.testing.assert_allclose(first.mu, mu, rtol=1e-6)
    np.testing.assert_allclose(first.sigma, sigma, rtol=1e-5, atol=1e-9)

    hit = ref()
    assert hit.from_cache and len(calls) == 1
    np.testing.assert_array_equal(hit.mu, first.mu)

    for changed in (dict(n=24), dict(network=tiny_network(seed=1)),
                    dict(network=tiny_network(resize="nearest")), dict(keep_features=True)):
        miss = ref(**changed)
        assert not miss.from_cache and miss.path.is_file()
    assert len(calls) == 5
    assert ref(keep_features=True).features.shape == (32, 6) and len(calls) == 5

    # A file whose stored key differs from the requested one is recomputed.
    key = dict(first.key, split="other")
    np.savez(first.path, mu=first.mu, sigma=first.sigma, key=np.array(json.dumps(key)))
    assert not ref().from_cache and len(calls) == 6

    with pytest.raises(UserError, match="only 40 images"):
        ref(n=50)


def test_evaluate_returns_scores_with_their_protocol(tmp_path):
    net = tiny_network()
    data = images(64, seed=2)
    ref = gm.reference_statistics(net, "toy", "train", [data], num_samples=64, batch_size=16,
                                  cache_dir=tmp_path, keep_features=True)
    same = gm.evaluate(net, [data], ref, num_samples=64, metrics=("fid", "kid", "pr"),
                       batch_size=16, kid_subsets=5, kid_subset_size=32)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
    assert same["protocol"] == {"n_real": 64, "n_fake": 64, "reference_dataset": "toy",
                                "reference_split": "train", "resize": "bilinear",
                                "network": "tiny", "weights_hash": "hash0"}
    darker = gm.evaluate(net, lambda: [data // 4], ref, num_samples=48, batch_size=16)
    assert darker["fid"] > 1e-3 and darker["protocol"]["n_fake"] == 48
    with pytest.raises(UserError, match="logits head"):
        gm.evaluate(net, [data], ref, num_samples=64, metrics=("is",))
    with pytest.raises(UserError, match="weights_hash"):
        gm.evaluate(tiny_network(seed=3), [data], ref, num_samples=64)
    no_features = gm.reference_statistics(net, "toy", "train", [data], num_samples=64,
                                          cache_dir=tmp_path / "b")
    with pytest.raises(UserError, match="keep_features"):
        gm.evaluate(net, [data], no_features, num_samples=64, metrics=("kid",))
