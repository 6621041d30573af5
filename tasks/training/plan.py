"""A training run's plan, made by one function for `ganflow train` and the train flow alike, so the two train the
same networks for the same settings: params.yaml's `train` section with the given settings on top, the trainer's
config (a network file's architecture when the run starts from one), the stage plan and the device."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from models.trainer import TrainConfig
from tasks.common.settings import TrainSettings, load
from tasks.training.stages import Stage, plan_stages, resolve_device, run_config


@dataclass(frozen=True)
class TrainPlan:
    settings: TrainSettings     # params.yaml's train section with the given settings on top
    config: TrainConfig         # what the trainer builds
    notes: tuple[str, ...]      # what a network file replaced (transfer learning), for the log
    stages: tuple[Stage, ...]   # up to train.kimg, or the family's default length
    device: str                 # train.device, auto resolved to cuda or cpu

    @property
    def total_kimg(self) -> float:
        return self.stages[-1].end_kimg

    @property
    def resume_from(self) -> str | None:
        return self.settings.resume_from or None


def plan_training(params: str | Path, given: dict[str, Any],
                  check_device: Callable[[str], None] | None = None) -> TrainPlan:
    """The plan for a run with these settings given (key → value, as the user named them; the others are
    params.yaml's). check_device(train.device) runs before a network file is read."""
    given = dict(given)
    p = load(TrainSettings, params, **given)
    if check_device is not None:
        check_device(p.device)
    # Started from a network file, the run has the file's architecture; the settings given must agree with it.
    cfg, notes = run_config(p, p.arch, p.resolution, p.seed, given=given)
    stages = plan_stages(cfg.arch, cfg.resolution, None, p)
    return TrainPlan(p, cfg, tuple(notes), tuple(stages), resolve_device(p.device))
