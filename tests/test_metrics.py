"""Host-side distribution metrics against SciPy/NumPy references and known values."""

import numpy as np
import pytest
import scipy.linalg

from common_jax.metrics import class_coverage, feature_statistics, frechet_distance


def test_frechet_distance_of_identical_gaussians_is_zero():
    x = np.random.RandomState(0).randn(500, 6)
    mu, sigma = feature_statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_known_value_for_diagonal_gaussians():
    # For diagonal covariances: ||mu1-mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
    a, b = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    expected = 4.0 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_matches_a_direct_scipy_computation():
    rng = np.random.RandomState(1)
    mu1, s1 = feature_statistics(rng.randn(300, 5))
    mu2, s2 = feature_statistics(rng.randn(300, 5) @ rng.randn(5, 5) + 1.0)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_class_coverage_counts_classes_and_kl():
    predicted = np.array([0] * 50 + [1] * 50)
    result = class_coverage(predicted, 10)
    assert result["classes_covered"] == 2
    assert result["kl_to_data"] == pytest.approx(np.log(5.0))
    uniform = class_coverage(np.arange(1000) % 10, 10)
    assert uniform["classes_covered"] == 10 and uniform["kl_to_data"] == pytest.approx(0.0)
