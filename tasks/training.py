"""Training a GAN on a curated dataset: the unit of work behind `ganflow train` and the training flow.

A run directory holds checkpoints/ckpt-<kimg>.pt; running again continues from the newest one that
loads, so a killed run is resumed by repeating its command. Launched by torchrun (one process per GPU,
or several on CPU with gloo), the same call trains data-parallel.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from models import distributed as dd
from models.checkpoint import CKPT_DIR, CheckpointError, latest_checkpoint, load_checkpoint
from models.data import load_images
from models.distributed import init_from_env
from models.trainer import TrainConfig, Trainer


# Settings a resumed run may change: they decide when to checkpoint, not what is trained.
RESUMABLE_CHANGES = frozenset({"snapshot_kimg"})
SUPERSEDED = "superseded"


@dataclass
class TrainResult:
    resumed_from: str | None     # checkpoint the run continued from, if any
    transferred_from: str | None # snapshot whose G/D/G_ema started a new run (transfer learning)
    stats: dict                  # last step's losses, kimg, ADA p, kimg/s, checkpoint path
    set_aside: str | None = None # where checkpoints of another config or dataset were moved (restart_on_change)


def config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """Names of the settings (and `dataset`) in which a checkpoint's run differs from cfg."""
    now = json.loads(json.dumps(asdict(cfg)))  # tuples become lists, as in the checkpoint
    return sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))


def set_aside_run(run_dir: str | Path) -> Path:
    """Move RUN/checkpoints and RUN/samples to RUN/superseded/<n>/ (nothing is deleted); returns that folder."""
    run_dir = Path(run_dir)
    n = 1
    while (run_dir / SUPERSEDED / str(n)).exists():
        n += 1
    dest = run_dir / SUPERSEDED / str(n)
    dest.mkdir(parents=True)
    for name in (CKPT_DIR, "samples"):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(dest / name))
    return dest


def check_resolution(data_dir: str | Path, resolution: int) -> None:
    """Refuse a training resolution above the dataset's (its images would only be upsampled)."""
    try:
        native = int(json.loads((Path(data_dir) / "dataset.json").read_text()).get("resolution") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return  # no or odd dataset.json: load_images says what is wrong with the dataset
    if native and resolution > native:
        raise ValueError(f"--resolution {resolution} (train.resolution) is above the dataset's {native}² "
                         f"({Path(data_dir) / 'dataset.json'}): train at {native} or less, or curate at {resolution}")


def dataset_hash(data_dir: str | Path) -> str:
    return json.loads((Path(data_dir) / "dataset.json").read_text()).get("content_hash", "")


def another_run_error(run_dir: str | Path, changed: list[str]) -> ValueError:
    return ValueError(f"{run_dir} holds checkpoints of another run ({', '.join(changed)} differ from this one's): "
                      f"use a new run directory, or restart on purpose (`ganflow train --restart-on-change`, or "
                      f"restart_on_change in the train deployment's form, moves them to "
                      f"{Path(run_dir) / SUPERSEDED}/)")


def claim_run_dir(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path,
                  restart_on_change: bool = False) -> str | None:
    """Before a run plans its stages from run_dir's checkpoints: those of another run (other settings or data)
    are an error, or with restart_on_change are moved aside (returns where to); None when the run dir is
    empty or this run's own."""
    found = latest_checkpoint(run_dir)
    if found is None:
        return None
    if not cfg.dataset:
        cfg = replace(cfg, dataset=dataset_hash(data_dir))
    changed = config_changes(found[1].get("config", {}), cfg)
    if not changed:
        return None
    if not restart_on_change:
        raise another_run_error(run_dir, changed)
    return str(set_aside_run(run_dir))


def run_training(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, target_kimg: float,
                 resume_from: str | Path | None = None, device: str = "cpu",
                 progress_fn: Callable[[dict], None] | None = None,
                 abort_fn: Callable[[], bool] | None = None,
                 summary_fn: Callable[[dict], None] | None = None,
                 restart_on_change: bool = False) -> TrainResult:
    """Train run_dir to target_kimg, continuing from its newest checkpoint. Checkpoints of another run (other
    settings, or trained on other data) are an error, or with restart_on_change are set aside and the run
    starts afresh: what a pipeline that reruns training after its data changed (dvc repro) needs."""
    # Under torchrun each process joins the group and takes its device; alone, this changes nothing.
    check_resolution(data_dir, cfg.resolution)  # before any work: a model above its data's size learns nothing
    device = init_from_env(device)
    images = load_images(data_dir, cfg.resolution)
    if not cfg.dataset:
        cfg = replace(cfg, dataset=dataset_hash(data_dir))
    found = latest_checkpoint(run_dir)
    moved = None
    if found is not None and (changed := config_changes(found[1].get("config", {}), cfg)):
        if not restart_on_change:
            raise another_run_error(run_dir, changed)
        if dd.rank() == 0:  # under torchrun one process moves the files, the others wait for it
            moved = str(set_aside_run(run_dir))
        dd.barrier()
        found = None
    trainer = Trainer(cfg, images, run_dir, device=device)
    resumed = transferred = None
    if found is not None:
        trainer.load_state_dict(found[1])
        resumed = str(found[0])
    elif resume_from:
        # A snapshot from another run: take its networks, start counters and optimizers afresh.
        source = load_checkpoint(resume_from)
        try:
            trainer.load_state_dict(source, weights_only=True)
        except (KeyError, RuntimeError, TypeError) as e:  # not a training checkpoint, or another architecture
            raise CheckpointError(f"--resume-from {resume_from}: its networks do not fit this run "
                                  f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]})") from None
        transferred = str(resume_from)
    if summary_fn:
        summary_fn({**trainer.summary(), "resumed_from": resumed, "transferred_from": transferred})
    stats = trainer.train(target_kimg, progress_fn=progress_fn, abort_fn=abort_fn)
    return TrainResult(resumed_from=resumed, transferred_from=transferred, stats=stats, set_aside=moved)
