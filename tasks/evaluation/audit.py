"""Precision/recall and the memorization audit, on feature vectors (DINOv2 when configured, else Inception).

Pure functions over [N, D] float32 arrays; distances are Euclidean, computed in chunks with torch.cdist (as
torch-fidelity's prc), so 50k × 50k never sits in memory.

- Precision and recall (Kynkäänniemi et al. 2019), k = 3, as torch-fidelity/dgm-eval: each image's radius is the
  distance to its k-th nearest neighbour within its own set; precision = the fraction of generated images inside
  some real image's ball, recall = the fraction of real images inside some generated image's ball (≤ radius).
- Memorization: a generated image is *memorized* when the distance to its nearest training image is below τ, the
  `quantile`-th quantile of the training images' distances to their nearest other training image. A generator
  that draws new images from the training distribution scores about `quantile`; one that copies scores 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

K = 3          # precision/recall neighbourhood (the paper's, torch-fidelity's and dgm-eval's default)
CHUNK = 1024   # query rows per cdist call (1024 × 50k distances: 200 MB)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def nearest(query: np.ndarray, ref: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(distances [n, k], indices [n, k]) of each query row's k nearest rows of ref, nearest first."""
    q, r = _t(query), _t(ref)
    k = min(k, len(r))
    dists, idx = [], []
    for chunk in q.split(CHUNK):
        d, i = torch.cdist(chunk, r).topk(k, dim=1, largest=False)
        dists.append(d)
        idx.append(i)
    return torch.cat(dists).numpy(), torch.cat(idx).numpy()


def kth_neighbour_distance(feats: np.ndarray, k: int) -> np.ndarray:
    """Each row's distance to its k-th nearest *other* row (k-th value + 1: the row itself is at distance 0)."""
    if len(feats) <= k:
        raise ValueError(f"the k={k} nearest neighbours need more than {k} images (got {len(feats)})")
    return nearest(feats, feats, k + 1)[0][:, k]


def _inside_any_ball(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    c, r = _t(centres), torch.from_numpy(radii.astype(np.float32))
    return torch.cat([(torch.cdist(chunk, c) <= r).any(dim=1) for chunk in _t(points).split(CHUNK)]).numpy()


def precision_recall(fake: np.ndarray, real: np.ndarray, k: int = K,
                     real_radii: np.ndarray | None = None) -> tuple[float, float]:
    """(precision, recall) of generated features against real ones (Kynkäänniemi et al. 2019). `real_radii`:
    kth_neighbour_distance(real, k), when the caller scores many snapshots against the same reals."""
    real_radii = kth_neighbour_distance(real, k) if real_radii is None else real_radii
    precision = _inside_any_ball(fake, real, real_radii).mean()
    recall = _inside_any_ball(real, fake, kth_neighbour_distance(fake, k)).mean()
    return float(precision), float(recall)


@dataclass(frozen=True)
class Memorization:
    threshold: float     # τ
    quantile: float      # of the training set's nearest-neighbour distances
    fraction: float      # generated images closer than τ to a training image
    n_train: int


def memorization_threshold(train: np.ndarray, quantile: float) -> float:
    """τ: the `quantile`-th quantile of the distances of training images to their nearest other training image."""
    return float(np.quantile(kth_neighbour_distance(train, 1), quantile))


def memorized(fake: np.ndarray, train: np.ndarray, threshold: float, quantile: float) -> Memorization:
    d = nearest(fake, train, 1)[0][:, 0]
    return Memorization(threshold, quantile, float((d < threshold).mean()), len(train))
