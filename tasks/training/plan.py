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
                  check_device: Callable[[str], None] | None = None,
                  data: str | Path | None = None, run_dir: str | Path | None = None) -> TrainPlan:
    """The plan for a run with these settings given (key → value, as the user named them; the others are
    params.yaml's). check_device(train.device) runs before a network file is read; then, given `data`, the
    dataset is made present (dataset_for_run)."""
    given = dict(given)
    p = load(TrainSettings, params, **given)
    if check_device is not None:
        check_device(p.device)
    if data is not None:
        dataset_for_run(data, run_dir)
    # Started from a network file, the run has the file's architecture; the settings given must agree with it.
    cfg, notes = run_config(p, p.arch, p.resolution, p.seed, given=given)
    stages = plan_stages(cfg.arch, cfg.resolution, None, p)
    return TrainPlan(p, cfg, tuple(notes), tuple(stages), resolve_device(p.device))


def dataset_for_run(data: str | Path, run_dir: str | Path | None) -> Path:
    """The curated dataset, fetched with DVC from the default remote when this machine lacks it (a worker that
    shares no disk with the one that curated it), checked against the content hash the run's checkpoints record.
    A dataset already here is left to claim_run_dir, which compares it with the checkpoints (and honours
    restart_on_change); DVC is imported only when one is missing."""
    if (Path(data) / "dataset.json").is_file():
        return Path(data)
    from tasks.versioning.fetch_dataset import ensure_dataset

    return ensure_dataset(data, recorded_dataset_hash(run_dir) if run_dir is not None else None)


def recorded_dataset_hash(run_dir: str | Path) -> str | None:
    """The content hash of the data the run folder's newest loadable checkpoint was trained on (for a run URL, its
    newest published checkpoint); None for a new run."""
    from models.checkpoint import latest_checkpoint, load_checkpoint
    from tasks.storage.url import is_url

    if is_url(run_dir):
        from tasks.storage.mirror import newest_published_checkpoint

        path = newest_published_checkpoint(run_dir)
        ckpt = load_checkpoint(path) if path is not None else None
    else:
        found = latest_checkpoint(run_dir)
        ckpt = found[1] if found else None
    return (ckpt.get("config", {}).get("dataset") or None) if ckpt else None
