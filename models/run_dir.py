"""A training run's folder: the one place that names its files and folders.

    RUN/checkpoints/ckpt-<kimg>.pt   full training state, one per snapshot (models.checkpoint)
    RUN/samples/fakes-<kimg>.png     G_ema's sample grid at each snapshot
    RUN/fid.csv                      FID/KID/... per evaluated snapshot (`ganflow evaluate`, DVC plots)
    RUN/metrics.json                 the latest scores, the best snapshot and flags (DVC metrics)
    RUN/best.pt                      G_ema + arch of the best snapshot
    RUN/superseded/<n>/              checkpoints/ and samples/ of an earlier run, set aside (restart_on_change)
    RUN/attempt-<n>.log              output of the training manager's n-th detached attempt
    RUN/lease/<generation>.json      who writes into the run folder now (tasks/training/lease.py)

Users, dvc.yaml's outs and the README rely on these names: they never change. <kimg> is written with three
decimals, zero-padded to ten characters, so names sort in training order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS, SAMPLES, SUPERSEDED, LEASE = "checkpoints", "samples", "superseded", "lease"
BEST, FID_CSV, METRICS_JSON = "best.pt", "fid.csv", "metrics.json"
CHECKPOINT_GLOB, SAMPLES_GLOB = "ckpt-*.pt", "fakes-*.png"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+(?:\.\d+)?)\.pt$")


def checkpoint_name(kimg: float) -> str:
    return f"ckpt-{kimg:010.3f}.pt"


def samples_name(kimg: float) -> str:
    return f"fakes-{kimg:010.3f}.png"


def checkpoint_kimg(name: str) -> float | None:
    """The kimg a checkpoint file name records; None for a name that is not a checkpoint's."""
    m = _CHECKPOINT_NAME.match(name)
    return float(m.group(1)) if m else None


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder. Pure: nothing here touches the disk except the listings."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))  # a str is welcome; frozen, so set it this way

    @classmethod
    def of_snapshot(cls, snapshot: str | Path) -> RunDir:
        """The run folder a snapshot file belongs to: RUN for RUN/best.pt and RUN/checkpoints/ckpt-*.pt."""
        parent = Path(snapshot).parent
        return cls(parent.parent if parent.name == CHECKPOINTS else parent)

    # ------------------------------------------------------------------ training
    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, kimg: float) -> Path:
        return self.checkpoints / checkpoint_name(kimg)

    def checkpoint_files(self) -> list[tuple[float, Path]]:
        """(kimg, path) of every file named like a checkpoint, oldest first (whether it loads is not checked)."""
        folder = self.checkpoints
        found = []
        for p in folder.glob(CHECKPOINT_GLOB) if folder.exists() else []:
            kimg = checkpoint_kimg(p.name)
            if kimg is not None:
                found.append((kimg, p))
        return sorted(found)

    def newest_checkpoint(self) -> tuple[float, Path] | None:
        """(kimg, path) of the newest file named like a checkpoint, None when there is none: where a run resumes
        and how far it got. By name only (a torn file is the loader's business); save_atomic's temp files and
        superseded/ runs are not counted."""
        found = self.checkpoint_files()
        return found[-1] if found else None

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES

    def sample_grid(self, kimg: float) -> Path:
        return self.samples / samples_name(kimg)

    def sample_grids(self) -> list[Path]:
        """Every sample grid, oldest first (the names sort by kimg)."""
        return sorted(self.samples.glob(SAMPLES_GLOB))

    def newest_sample_grid(self) -> Path | None:
        grids = self.sample_grids()
        return grids[-1] if grids else None

    # ------------------------------------------------------------------ evaluation
    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def fid_csv(self) -> Path:
        return self.path / FID_CSV

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_JSON

    # ------------------------------------------------------------------ restarts
    def attempt_log(self, attempt: int) -> Path:
        return self.path / f"attempt-{attempt}.log"

    @property
    def lease(self) -> Path:
        return self.path / LEASE

    @property
    def superseded(self) -> Path:
        return self.path / SUPERSEDED

    def next_superseded(self) -> RunDir:
        """RUN/superseded/<n>/ with the first n not taken: where an earlier run's files go (itself run-shaped)."""
        n = 1
        while (self.superseded / str(n)).exists():
            n += 1
        return RunDir(self.superseded / str(n))

    @property
    def set_aside_on_restart(self) -> tuple[Path, ...]:
        """What a restart moves to superseded/<n>/: the training outputs (evaluation files stay and are voided
        by their evaluation key)."""
        return (self.checkpoints, self.samples)
