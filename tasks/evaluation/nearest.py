"""The training images nearest a generated one, for `ganflow serve`: the features and the rule of the evaluation's
memorization audit (tasks.evaluation.audit), with the training features read from the evaluation's cache (keyed like the real
statistics: dataset content hash, weights sha256, extractor), extracted there once when absent. No Prefect here.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.common.settings import EvaluateSettings, declared


@dataclass(frozen=True)
class NeighbourSettings:
    data: Path                  # the curated dataset (or folder) the run trained on
    metric: str                 # "fd_dinov2": DINOv2 features; "fid": Inception's (what the evaluation audits in)
    weights: Path               # that extractor's weights file
    sha256: str | None = None   # expected sha256 of it
    cache_dir: str | None = None  # evaluate.cache_dir: where the training features are cached
    n_real: int | None = None   # evaluate.n_real (None: all images)
    quantile: float = declared(EvaluateSettings, "memorized_quantile")
    batch: int = declared(EvaluateSettings, "batch")
    device: str = "cpu"


class TrainingNeighbours:
    """Loaded on first use (the extractor, the cached training features, their image names and τ), then shared by
    every request; a lock keeps two requests from extracting at once."""

    def __init__(self, settings: NeighbourSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._state: tuple | None = None

    def _load(self) -> tuple:
        from tasks.evaluation.audit import memorization_threshold
        from tasks.evaluation.metrics import feature_spaces, real_stats, source_ids

        with self._lock:
            if self._state is None:
                s = self.settings
                dinov2 = s.metric == "fd_dinov2"
                space = feature_spaces((s.metric,), None if dinov2 else s.weights, s.weights if dinov2 else None,
                                       None if dinov2 else s.sha256, s.sha256 if dinov2 else None, s.device)[0]
                stats, _cached = real_stats(s.data, space.extractor, space.sha256, s.cache_dir, s.n_real,
                                            keep_features=True, batch=s.batch, device=s.device, feature=space.name)
                ids = source_ids(s.data, s.n_real)
                if len(ids) != len(stats.features):  # type: ignore[arg-type]  # keep_features=True
                    raise RuntimeError(f"{s.data} lists {len(ids)} images but its cached features hold "
                                       # mypy: keep_features=True
                                       f"{len(stats.features)}: delete the cache in {s.cache_dir}")  # type: ignore[arg-type]
                # mypy: keep_features=True
                tau = memorization_threshold(stats.features, s.quantile) if len(ids) > 1 else None  # type: ignore[arg-type]
                self._state = (space, stats.features, ids, {name: i for i, name in enumerate(ids)}, tau)
        return self._state

    def nearest(self, image: np.ndarray, count: int = 3) -> dict:
        """The `count` training images nearest to `image` (HWC uint8) in the audit's features, nearest first."""
        from tasks.evaluation.audit import nearest

        space, train, ids, _index, tau = self._load()
        with self._lock, torch.no_grad():
            batch = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(self.settings.device)
            feats = space.extractor(batch)[0].cpu().numpy()
        dist, idx = nearest(feats, train, count)
        return {"features": space.name, "threshold": tau, "quantile": self.settings.quantile,
                "memorized": bool(tau is not None and dist[0, 0] < tau),
                "neighbours": [{"rank": r + 1, "id": ids[i], "distance": float(d)}
                               for r, (d, i) in enumerate(zip(dist[0], idx[0]))]}

    def image(self, image_id: str) -> np.ndarray:
        """A training image by the name nearest() gave; KeyError for a name the dataset does not list."""
        from tasks.evaluation.metrics import read_source_image

        if image_id not in self._load()[3]:
            raise KeyError(image_id)
        return read_source_image(self.settings.data, image_id)
