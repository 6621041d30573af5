"""Evaluation settings (params.yaml `evaluate:`)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from tasks.params import ParamsError


@dataclass(frozen=True)
class EvaluateParams:
    inception_weights: str = ""   # path of torch-fidelity's InceptionV3 weights ("" = $GANFLOW_INCEPTION_WEIGHTS)
    inception_sha256: str = ""    # expected sha256 of that file ("" = not checked beyond weights_only)
    n_fake: int = 10000           # generated images per snapshot evaluation (papers: 50000)
    n_real: int = 0               # real images for the statistics; 0 = all
    batch: int = 64               # images per extractor batch
    kid: bool = True              # also KID
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    cache_dir: str = "data/cache/fid"
    diverge_fid_rises: int = 3    # flag a snapshot after FID rose this many snapshots in a row
    diverge_d_loss: float = 0.05  # flag when D loss falls below this while G loss climbs


def evaluate_params(path: str | Path = "params.yaml") -> EvaluateParams:
    """The `evaluate` section; missing keys (or a missing section/file) take the defaults above."""
    path = Path(path)
    section = (yaml.safe_load(path.read_text()) or {}).get("evaluate") if path.exists() else None
    section = section or {}
    known = {f.name for f in fields(EvaluateParams)}
    unknown = set(section) - known
    if unknown:
        raise ParamsError(f"{path}: unknown evaluate key(s) {sorted(unknown)}; known: {sorted(known)}")
    values = {k: ("" if v is None else v) for k, v in section.items()}
    return EvaluateParams(**values)
