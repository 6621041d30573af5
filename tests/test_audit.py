"""Precision/recall and the memorization rule on synthetic features with known answers, and equal to
torch-fidelity's prc on the same features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.evaluation.audit import kth_neighbour_distance, memorization_threshold, memorized, nearest, precision_recall


def cloud(n: int, centre: float, seed: int, dim: int = 16) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, dim)) + centre).astype(np.float32)


def test_identical_sets_score_one_and_disjoint_sets_zero():
    a = cloud(40, 0.0, 1)
    assert precision_recall(a, a.copy()) == (1.0, 1.0)
    assert precision_recall(cloud(40, 100.0, 2), a) == (0.0, 0.0)


def test_a_known_partial_case():
    # Reals: 10 points on a line, 1 apart; their k=3 radii are 3 at the ends and 2 inside.
    real = np.zeros((10, 2), np.float32)
    real[:, 0] = np.arange(10)
    assert list(kth_neighbour_distance(real, 3)) == [3, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    # Fakes: 4 half a unit above reals 0-3 (inside their balls), 4 far away: precision 4/8.
    # The near fakes' own radii are 3, 2, 2, 3 (the same line), so their balls reach reals 0-5: recall 6/10.
    near = np.float32([[0, 0.5], [1, 0.5], [2, 0.5], [3, 0.5]])
    far = near + np.float32([1000, 0])
    assert precision_recall(np.concatenate([near, far]), real) == (0.5, 0.6)


def test_equals_torch_fidelity_prc():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    fake, real = cloud(50, 0.3, 3, dim=32), cloud(60, 0.0, 4, dim=32)
    ref = calculate_precision_recall_full(torch.from_numpy(fake), torch.from_numpy(real), neighborhood=3)
    ours = precision_recall(fake, real)
    assert ours == pytest.approx(ref, abs=1e-6)  # torch-fidelity's means are float32
    assert 0 < ours[0] < 1 and 0 < ours[1] < 1


def test_copies_are_memorized_and_fresh_samples_mostly_not():
    train = cloud(200, 0.0, 5)
    tau = memorization_threshold(train, 0.05)
    copies = memorized(train[:50] + 1e-4, train, tau, 0.05)
    fresh = memorized(cloud(200, 0.0, 6), train, tau, 0.05)
    assert copies.fraction == 1.0
    assert fresh.fraction < 0.2  # about the quantile (0.05) for samples of the training distribution
    d, i = nearest(train[:3] + 1e-4, train, 3)
    assert list(i[:, 0]) == [0, 1, 2] and np.all(np.diff(d, axis=1) >= 0)
