"""Distribution metrics computed on the host in float64 (shared by GAN evaluations).

This package's top level holds the small host-side functions (feature statistics, the Frechet
distance, class coverage). The GAN image metrics live in submodules, imported on demand because
they pull in JAX and Flax:
- `inception`: the FID Inception network in Flax, its input preprocessing and loader.
- `convert_inception`: converts the TorchScript / pytorch-fid weights to our .npz file.
- `gan_metrics`: FID, KID, Inception Score, precision/recall, streaming statistics, the
  data-parallel feature extraction and the cached reference statistics.
- `judge`: one of our trained classifiers as the feature network for small images (FID and
  KID on its penultimate features) and as the judge of mode coverage (its class histogram).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64, unbiased) of features [N, D]."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D]; got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), the formula behind FID.
    A tiny diagonal offset is added when the product is singular, as the FID reference does.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: {mu1.shape}/{sigma1.shape} vs {mu2.shape}/{sigma2.shape}")
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = covmean.real  # imaginary parts are numerical noise for PSD inputs
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def class_coverage(predicted: np.ndarray, num_classes: int,
                   reference: np.ndarray | None = None, *, threshold: float = 0.01) -> dict:
    """Mode coverage of generated samples from a classifier's predicted classes.

    Returns the class histogram, the number of classes holding at least `threshold` of the
    samples (and that threshold), and KL(sample class distribution || reference distribution).
    `reference` is a class histogram (counts or shares) of the data; uniform when not given.
    The KL is infinite when samples fall in a class the reference never has.
    """
    counts = np.bincount(np.asarray(predicted), minlength=num_classes).astype(np.float64)
    p = counts / counts.sum()
    q = (np.full(num_classes, 1.0 / num_classes) if reference is None
         else np.asarray(reference, np.float64) / np.sum(reference))
    nonzero = p > 0
    with np.errstate(divide="ignore"):  # q = 0 where p > 0: an infinite KL, reported as such
        kl = float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))
    return {"histogram": counts.astype(int).tolist(),
            "classes_covered": int((p >= threshold).sum()),
            "coverage_threshold": float(threshold),
            "kl_to_data": kl}
