"""What training returns: one stage's result (and the evaluation after it), and a whole train flow run's.

Typed here, turned into plain dicts only at the edge (the flow's return value, JSON, artifacts) by to_dict(),
whose keys and order are what the flow has always returned.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class StageResult:
    end_kimg: float                  # the stage trains the run up to this many kimg
    kimg: float                      # where the run is now
    resumed_from: str | None         # checkpoint the stage continued from, if any
    transferred_from: str | None     # network file a new run started from (transfer learning), if any
    checkpoint: str | None           # the newest checkpoint this stage wrote (None: the stage was already done)
    loss_D: float | None             # last step's losses, ADA p and speed (None: no step ran)
    loss_G: float | None
    augment_p: float | None
    kimg_per_s: float | None
    samples: str | None              # the run's newest sample grid
    seconds: float                   # wall time of the stage
    attempt: int = 1                 # the flow run's attempt that trained it (> 1: resumed after a preemption)
    run_info: dict | None = None     # the trainer's description of the run (for the log; not in to_dict)

    @classmethod
    def from_stats(cls, end_kimg: float, kimg: float, stats: dict, *, resumed_from: str | None,
                   transferred_from: str | None, samples: str | None, seconds: float,
                   run_info: dict | None = None) -> StageResult:
        """From the trainer's last stats (empty when the stage had nothing left to train)."""
        return cls(end_kimg=end_kimg, kimg=kimg, resumed_from=resumed_from, transferred_from=transferred_from,
                   checkpoint=stats.get("checkpoint"), loss_D=stats.get("loss_D"), loss_G=stats.get("loss_G"),
                   augment_p=stats.get("augment_p"), kimg_per_s=stats.get("kimg_per_s"), samples=samples,
                   seconds=seconds, run_info=run_info)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "run_info"}


@dataclass(frozen=True)
class EvaluationOutcome:
    """What the evaluation after a stage came to: its summary, or why it was skipped or failed."""
    status: Literal["evaluated", "skipped", "failed"]
    summary: dict[str, Any] | None = None   # evaluated: the evaluate flow's result (EvaluationSummary.to_dict())
    reason: str = ""                        # skipped or failed: why, in one line

    @classmethod
    def evaluated(cls, summary: dict[str, Any]) -> EvaluationOutcome:
        return cls("evaluated", summary=summary)

    @classmethod
    def skipped(cls, reason: str) -> EvaluationOutcome:
        return cls("skipped", reason=reason)

    @classmethod
    def failed(cls, reason: str) -> EvaluationOutcome:
        return cls("failed", reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """The summary as is, or {"skipped": why} / {"failed": why}: what the flow has always returned."""
        if self.status == "evaluated":
            return dict(self.summary or {})
        return {self.status: self.reason}


@dataclass(frozen=True)
class TrainedStage:
    """One stage of a train flow run: its result and the evaluation that followed it."""
    stage: str                       # its label, e.g. "stage 2/5 (cycle 2/5)"
    result: StageResult
    evaluate: EvaluationOutcome | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **self.result.to_dict(),
                "evaluate": self.evaluate.to_dict() if self.evaluate else None}


@dataclass(frozen=True)
class TrainRun:
    """A train flow run: what it trained and the stages it ran (stages done before it are not listed)."""
    run_dir: str
    arch: str
    resolution: int
    total_kimg: float                # the plan's end
    kimg: float                      # the newest checkpoint's kimg when the flow ended
    stages: tuple[TrainedStage, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "arch": self.arch, "resolution": self.resolution,
                "total_kimg": self.total_kimg, "kimg": self.kimg, "stages": [s.to_dict() for s in self.stages]}
