"""The JSON bodies of `ganflow serve`'s API (tasks.serving.app), as pydantic models: FastAPI validates the
responses against them and documents them at /docs under these names."""
from __future__ import annotations

from pydantic import BaseModel


class Problem(BaseModel):
    detail: str                              # what was wrong and what to send instead
    errors: list[dict] | None = None         # FastAPI's per-parameter errors, when the parameters did not parse


class Snapshot(BaseModel):
    name: str
    kimg: float | None


class Snapshots(BaseModel):
    default: str
    snapshots: list[Snapshot]


class Info(BaseModel):
    snapshot: str
    kimg: float | None
    arch: str
    native_resolution: int
    resolutions: list[int]
    default_resolution: int
    truncation: bool                         # whether truncation applies (StyleGAN2) or must stay 1 (PGGAN)
    stage: int | None
    alpha: float | None
    limits: dict


class FidRow(BaseModel):
    kimg: float
    fid: float | None
    kid: float | None
    fd_dinov2: float | None                  # with evaluate.metrics fd_dinov2
    precision: float | None                  # k=3, in DINOv2 features when computed, else Inception's
    recall: float | None
    memorized: float | None                  # fraction of generated images closer than τ to a training image
    snapshot: str | None                     # its checkpoint's name, while that file exists
    note: str


class FidTable(BaseModel):
    rows: list[FidRow]
    best_kimg: float | None
    note: str


class Neighbour(BaseModel):
    rank: int
    id: str                                  # for /api/training-image.png
    distance: float


class Nearest(BaseModel):
    snapshot: str
    seed: int
    features: str                            # the feature space: dinov2-vitl14, 2048 (Inception), ...
    threshold: float | None                  # τ of the memorization audit
    quantile: float
    memorized: bool                          # the nearest distance is below τ
    neighbours: list[Neighbour]
