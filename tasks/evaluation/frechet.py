"""The distances between two sets of features, as torch-fidelity computes them: the Fréchet distance of their
statistics (FID, FD-DINOv2) and KID. numpy only at import, so the metric registry's built-in metrics use them
without importing the extractors (tasks.evaluation.metrics), which import the registry."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.common.settings import EvaluateSettings, declared


@dataclass
class Stats:
    mu: np.ndarray      # float64 [2048]
    sigma: np.ndarray   # float64 [2048, 2048]
    n: int
    features: np.ndarray | None = None  # float32 [n, 2048], kept for KID

    @classmethod
    def of(cls, features: np.ndarray, keep_features: bool = False) -> Stats:
        # As torch-fidelity: np.mean of the float32 features and np.cov (which works in float64).
        return cls(mu=np.mean(features, axis=0).astype(np.float64), sigma=np.cov(features, rowvar=False),
                   n=len(features), features=features if keep_features else None)


def fid_from_stats(a: Stats, b: Stats) -> float:
    """Fréchet distance as torch-fidelity (TTUR) computes it: trace sqrt via eigenvalues of sigma_a·sigma_b."""
    diff = a.mu - b.mu
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(a.sigma.dot(b.sigma)).astype("complex128")).real)
    return float(diff.dot(diff) + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_covmean)


def kid(features_a: np.ndarray, features_b: np.ndarray, subsets: int = declared(EvaluateSettings, "kid_subsets"),
        subset_size: int = declared(EvaluateSettings, "kid_subset_size"),
        seed: int = 2020) -> tuple[float, float]:
    """KID (mean, std) as torch-fidelity: unbiased MMD² with the cubic polynomial kernel over random subsets.
    `subset_size` is capped at the smaller set's size (torch-fidelity would refuse)."""
    from torch_fidelity.metric_kid import mmd2

    size = min(subset_size, len(features_a), len(features_b))
    if size < 2:
        raise ValueError("KID needs at least 2 images on each side")
    rng = np.random.RandomState(seed)
    gamma = 1.0 / features_a.shape[1]
    kernel = lambda x, y: (np.matmul(x, y.T) * gamma + 1) ** 3  # noqa: E731
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = features_a[rng.choice(len(features_a), size, replace=False)]
        y = features_b[rng.choice(len(features_b), size, replace=False)]
        mmds[i] = mmd2(kernel(x, x), kernel(x, y), kernel(y, y))  # torch-fidelity's own (unbiased) estimator
    return float(np.mean(mmds)), float(np.std(mmds))
