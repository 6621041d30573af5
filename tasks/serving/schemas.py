"""The JSON bodies of `ganflow serve`'s API (tasks.serving.app), as pydantic models: FastAPI validates the
responses against them and documents them at /docs under these names."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, create_model


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


# The FID table's score columns are the registered metrics' labelled ones (tasks.evaluation.registry.labelled), so
# its models are built when an app is created (tasks.serving.app.table_routes): a metric registered by then is in
# the API, its schema and the page, with no edit here.
ROW_FIELDS = ("kimg", "snapshot", "note")   # a row's own fields around the scores


def fid_row_model(scores: list[str]) -> type[BaseModel]:
    """FidRow: kimg, one `float | None` per score column in order (null where fid.csv has no value: fd_dinov2
    without evaluate.metrics fd_dinov2, memorized without the audit, ...), the checkpoint's name while that file
    exists, and the row's note (best, diverged, memorizing)."""
    clash = sorted(set(scores) & set(ROW_FIELDS))
    if clash:
        raise ValueError(f"a metric column cannot be named {clash[0]!r}: the FID table's rows use that name")
    fields: dict[str, Any] = {"kimg": (float, ...), **{name: (float | None, ...) for name in scores},
                              "snapshot": (str | None, ...), "note": (str, ...)}
    return create_model("FidRow", **fields)


def fid_table_model(scores: list[str]) -> type[BaseModel]:
    """FidTable: the rows (fid_row_model), the best snapshot's kimg and a note on what was left out or is missing."""
    row = fid_row_model(scores)
    return create_model("FidTable", rows=(list[row], ...),  # type: ignore[valid-type]  # a class built at run time
                        best_kimg=(float | None, ...), note=(str, ...))


class FidColumn(BaseModel):
    name: str                                # the key in /api/fid's rows
    label: str                               # its title
    fmt: str                                 # how its values are written: a Python format string, e.g. "{:.4f}"
    always: bool                             # shown even when no row has a value


class FidColumns(BaseModel):
    columns: list[FidColumn]


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
