"""Settings read from params.yaml, the single source of truth for thresholds (DVC and flows read it)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PARAMS = Path("params.yaml")
# Above this side a dataset is not a GAN dataset but a typo (`--resolution 100000` would ask for 30 GB per image).
MAX_RESOLUTION = 4096


class ParamsError(ValueError):
    """params.yaml is missing, or a key is missing or has the wrong type."""


@dataclass(frozen=True)
class CurateParams:
    resolution: int
    batch_size: int
    workers: int
    min_side_fraction: float
    blur_size: int
    blur_min_var: float
    gray_max_chroma: float
    face_mode: str
    face_min_fraction: float
    face_min_neighbors: int
    text_min_confidence: float
    text_min_chars: int
    text_max_area: float
    text_max_boxes: int
    dup_max_distance: int
    matte: str
    rembg_model: str
    shard_size: int
    max_aspect: float              # long side / short side above this: rejected as `aspect` before any resize
    max_member_bytes: int          # an archive member or file larger than this is a `bomb` (never written out)
    max_compression_ratio: float   # a member inflating more than this per compressed byte is a `bomb`
    dask_address: str = ""    # Dask scheduler (tcp://host:8786) the batch tasks run on; "" = this machine

    def __post_init__(self) -> None:
        if any(ch.isspace() for ch in self.dask_address):
            raise ParamsError(f"curate.dask_address must be a scheduler address like tcp://host:8786, "
                              f"not {self.dask_address!r}")
        if self.face_mode not in ("reject", "crop"):
            raise ParamsError(f"curate.face_mode must be 'reject' or 'crop', not {self.face_mode!r}")
        if self.matte not in ("auto", "rembg", "grabcut", "none"):
            raise ParamsError(f"curate.matte must be auto|rembg|grabcut|none, not {self.matte!r}")
        if not 8 <= self.resolution <= MAX_RESOLUTION:
            raise ParamsError(f"curate.resolution must be between 8 and {MAX_RESOLUTION}, not {self.resolution}")
        positive = {"batch_size": self.batch_size, "shard_size": self.shard_size, "blur_size": self.blur_size,
                    "max_member_bytes": self.max_member_bytes}
        for key, value in positive.items():
            if value < 1:
                raise ParamsError(f"curate.{key} must be at least 1, not {value}")
        for key in ("min_side_fraction", "blur_min_var", "gray_max_chroma", "max_aspect", "max_compression_ratio"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0:
                raise ParamsError(f"curate.{key} must be a finite number >= 0, not {value}")
        if self.max_aspect < 1 or self.max_compression_ratio < 1:
            raise ParamsError("curate.max_aspect and curate.max_compression_ratio must be at least 1")

    @property
    def min_side(self) -> int:
        return int(round(self.min_side_fraction * self.resolution))

    def digest(self, *keys: str) -> str:
        """A short hash of the named settings: cache keys change exactly when those settings do."""
        picked = {k: getattr(self, k) for k in sorted(keys)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class IngestParams:
    source: str       # demo | path | hashtag
    input: str        # folder, .zip or .tar when source is path
    hashtag: str      # hashtag without '#' when source is hashtag
    max_posts: int    # Instagram: posts to take

    def __post_init__(self) -> None:
        if self.source not in ("demo", "path", "hashtag"):
            raise ParamsError(f"ingest.source must be demo, path or hashtag, not {self.source!r}")
        if self.source == "path" and not self.input:
            raise ParamsError("ingest.source is path: set ingest.input to a folder, a .zip or a .tar")
        if self.source == "hashtag" and not self.hashtag:
            raise ParamsError("ingest.source is hashtag: set ingest.hashtag")


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path} (run from the project root or pass --params)")
    try:
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:  # one line: where the YAML broke, not a parser traceback
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ParamsError(f"params file {path} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"params file {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return data


def _build(cls, section: dict[str, Any], name: str, overrides: dict[str, Any]):
    values = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    defaults = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    missing = sorted(set(fields) - set(values) - defaults)
    unknown = sorted(set(values) - set(fields))
    if missing or unknown:
        raise ParamsError(f"params section {name!r}: missing {missing}, unknown {unknown}")
    casts = {"int": int, "float": float, "str": str}
    try:
        # mypy: annotations are strings here
        return cls(**{k: casts[fields[k]](values[k] if values[k] is not None else "") for k in fields if k in values})  # type: ignore[index]
    except (TypeError, ValueError) as e:
        raise ParamsError(f"params section {name!r}: {e}") from e


def ingest_params(path: str | Path = DEFAULT_PARAMS, **overrides: Any) -> IngestParams:
    """The `ingest` section (what the DVC pipeline's ingest stage reads), with overrides."""
    data = load_params(path)
    if "ingest" not in data:
        raise ParamsError(f"{path} has no 'ingest' section")
    section = {k: ("" if v is None else v) for k, v in data["ingest"].items()}
    return _build(IngestParams, section, "ingest", overrides)


def curate_params(path: str | Path = DEFAULT_PARAMS, **overrides: Any) -> CurateParams:
    """The `curate` section, with CLI overrides (None means: keep the file's value)."""
    data = load_params(path)
    if "curate" not in data:
        raise ParamsError(f"{path} has no 'curate' section")
    return _build(CurateParams, data["curate"], "curate", overrides)
