"""Training a GAN on a curated dataset: the unit of work behind `ganflow train` and the training flow.

A run directory holds checkpoints/ckpt-<kimg>.pt; running again continues from the newest one that
loads, so a killed run is resumed by repeating its command. Launched by torchrun (one process per GPU,
or several on CPU with gloo), the same call trains data-parallel.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from models.checkpoint import latest_checkpoint, load_checkpoint
from models.data import load_images
from models.distributed import init_from_env
from models.trainer import TrainConfig, Trainer


@dataclass
class TrainResult:
    resumed_from: str | None     # checkpoint the run continued from, if any
    transferred_from: str | None # snapshot whose G/D/G_ema started a new run (transfer learning)
    stats: dict                  # last step's losses, kimg, ADA p, kimg/s, checkpoint path


def run_training(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, target_kimg: float,
                 resume_from: str | Path | None = None, device: str = "cpu",
                 progress_fn: Callable[[dict], None] | None = None,
                 abort_fn: Callable[[], bool] | None = None,
                 summary_fn: Callable[[dict], None] | None = None) -> TrainResult:
    # Under torchrun each process joins the group and takes its device; alone, this changes nothing.
    device = init_from_env(device)
    images = load_images(data_dir, cfg.resolution)
    trainer = Trainer(cfg, images, run_dir, device=device)
    found = latest_checkpoint(run_dir)
    resumed = transferred = None
    if found is not None:
        trainer.load_state_dict(found[1])
        resumed = str(found[0])
    elif resume_from:
        # A snapshot from another run: take its networks, start counters and optimizers afresh.
        trainer.load_state_dict(load_checkpoint(resume_from), weights_only=True)
        transferred = str(resume_from)
    if summary_fn:
        summary_fn({**trainer.summary(), "resumed_from": resumed, "transferred_from": transferred})
    stats = trainer.train(target_kimg, progress_fn=progress_fn, abort_fn=abort_fn)
    return TrainResult(resumed_from=resumed, transferred_from=transferred, stats=stats)
