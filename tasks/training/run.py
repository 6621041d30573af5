"""Training a GAN on a curated dataset: the unit of work behind `ganflow train` and the training flow.

A run directory holds checkpoints/ckpt-<kimg>.pt; running again continues from the newest one that
loads, so a killed run is resumed by repeating its command. Launched by torchrun (one process per GPU,
or several on CPU with gloo), the same call trains data-parallel.
"""
from __future__ import annotations

import json
import shutil
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from models import distributed as dd
from models.checkpoint import latest_checkpoint
from models.data import DatasetError, load_images
from models.distributed import init_from_env
from models.run_dir import RunDir
from models.train_config import saved_config
from models.trainer import TrainConfig, Trainer
from models.transfer import TransferError, file_sha256, load_networks
from tasks.storage.mirror import open_run, publish, url_of
from tasks.storage.url import cache_dir, check_no_credentials, is_url
from tasks.training.lease import guarded, run_dir_lease
from tasks.training.transfer import transfer_config


# Settings a resumed run may change: they decide when to checkpoint, not what is trained; and where the
# starting network file lies (its sha256, compared, says whether it is the same network).
RESUMABLE_CHANGES = frozenset({"snapshot_kimg", "transfer_from"})


@dataclass
class TrainResult:
    resumed_from: str | None     # checkpoint the run continued from, if any
    transferred_from: str | None # snapshot whose G/D/G_ema started a new run (transfer learning)
    stats: dict                  # last step's losses, kimg, ADA p, kimg/s, checkpoint path
    set_aside: str | None = None # where checkpoints of another config or dataset were moved (restart_on_change)
    transfer_notes: list[str] = field(default_factory=list)  # what the network file lacked (a best.pt: no D)


def config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """Names of the settings (and `dataset`) in which a checkpoint's run differs from cfg. A setting the
    checkpoint predates counts as its default (a run continues after an upgrade that adds one)."""
    now = saved_config(json.loads(json.dumps(asdict(cfg))))  # tuples become lists, as in the checkpoint
    saved = {**json.loads(json.dumps(asdict(TrainConfig()))), **saved_config(saved)}
    return sorted(k for k in set(now) | set(saved) if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k))


def _changed_run_message(run_dir: str | Path, changed: list[str], saved: dict, cfg: TrainConfig) -> str:
    hint = ""
    if "transfer_sha256" in changed and saved.get("transfer_from") and not cfg.transfer_sha256:
        hint = f" (this run started from the networks of {saved['transfer_from']}: repeat --resume-from to continue it)"
    elif "transfer_sha256" in changed and saved.get("transfer_sha256") and cfg.transfer_sha256:
        hint = f" ({cfg.transfer_from} is not the network file this run started from)"
    return (f"{run_dir} holds checkpoints of another run ({', '.join(changed)} differ from this one's){hint}: use a "
            f"new run directory, or restart on purpose (`ganflow train --restart-on-change`, or restart_on_change "
            f"in the train deployment's form, moves them to {RunDir(run_dir).superseded}/)")


def set_aside_run(run_dir: str | Path) -> Path:
    """Move RUN/checkpoints and RUN/samples to RUN/superseded/<n>/ (nothing is deleted); returns that folder."""
    run = RunDir(run_dir)
    dest = run.next_superseded()
    dest.path.mkdir(parents=True)
    for src, to in zip(run.set_aside_on_restart, dest.set_aside_on_restart):
        if src.exists():
            shutil.move(str(src), str(to))
    return dest.path


def check_resolution(data_dir: str | Path, resolution: int) -> None:
    """Refuse a training resolution above the dataset's (its images would only be upsampled)."""
    try:
        native = int(json.loads((Path(data_dir) / "dataset.json").read_text()).get("resolution") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return  # no or odd dataset.json: load_images says what is wrong with the dataset
    if native and resolution > native:
        raise ValueError(f"--resolution {resolution} (train.resolution) is above the dataset's {native}² "
                         f"({Path(data_dir) / 'dataset.json'}): train at {native} or less, or curate at {resolution}")


def dataset_meta(data_dir: str | Path) -> dict:
    """dataset.json's contents, {} when there is none or it does not parse (load_images says what is wrong)."""
    try:
        meta = json.loads((Path(data_dir) / "dataset.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def dataset_hash(data_dir: str | Path) -> str:
    """The curated dataset's content hash; a folder without dataset.json is a DatasetError (not worth a retry)."""
    meta = Path(data_dir) / "dataset.json"
    if not meta.is_file():
        raise DatasetError(f"{data_dir} has no dataset.json: run `ganflow curate --out {data_dir}` first")
    return json.loads(meta.read_text()).get("content_hash", "")


def check_run_dir_outside_data(data_dir: str | Path, run_dir: str | Path) -> None:
    """A run folder never lies in a dataset (the data itself, its shards/, or any curated dataset): checkpoints
    written there would be files the dataset's reader and DVC do not expect."""
    from tasks.common.outdir import dataset_around

    check_no_credentials(run_dir)
    if is_url(url_of(run_dir)):
        return  # a run URL (or its cache) is never inside a local dataset
    run, data = Path(run_dir).absolute(), Path(data_dir).absolute()
    if run == data or run.is_relative_to(data):
        where = "is the dataset --data names" if run == data else f"is inside the dataset {data_dir}"
        raise ValueError(f"--run-dir {str(run_dir)!r} {where}: checkpoints never go into a dataset; name a run "
                         "folder outside it")
    found = dataset_around(run)
    if found is not None:
        raise ValueError(f"--run-dir {str(run_dir)!r} is inside the curated dataset {found}: checkpoints never go "
                         "into a dataset; name a run folder outside it")


def claim_run_dir(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path,
                  restart_on_change: bool = False) -> str | None:
    """Before a run plans its stages from run_dir's checkpoints: those of another run (other settings or data)
    are an error, or with restart_on_change are moved aside (returns where to); None when the run dir is
    empty or this run's own. A run folder in a dataset is refused first (check_run_dir_outside_data)."""
    check_run_dir_outside_data(data_dir, run_dir)
    found = latest_checkpoint(run_dir)
    if found is None:
        return None
    if not cfg.dataset:
        cfg = replace(cfg, dataset=dataset_hash(data_dir))
    return _claim(cfg, run_dir, found, restart_on_change)[0]


def _claim(cfg: TrainConfig, run_dir: str | Path, found: tuple | None,
           restart_on_change: bool) -> tuple[str | None, tuple | None]:
    """claim_run_dir's decision on the newest checkpoint `found`: (where another run's checkpoints were moved,
    the checkpoint to resume from: found, or None once they were moved). Under torchrun one process moves the
    files and the others wait for it."""
    if found is None or not (changed := config_changes(found[1].get("config", {}), cfg)):
        return None, found
    if not restart_on_change:
        raise ValueError(_changed_run_message(run_dir, changed, found[1].get("config", {}), cfg))
    moved = str(set_aside_run(run_dir)) if dd.rank() == 0 else None
    dd.barrier()
    return moved, None


def check_dataset_resolution(data_dir: str | Path, resolution: int, source: str) -> None:
    """A pretrained network needs images at its resolution: a smaller dataset would be upscaled (blurry reals
    that D learns to tell apart). A larger one is downscaled, as for any run."""
    have = json.loads((Path(data_dir) / "dataset.json").read_text()).get("resolution")
    if have and int(have) < resolution:
        raise DatasetError(f"{data_dir} holds {have}² images and {source} is a {resolution}² network: curate at "
                           f"{resolution} (`ganflow curate --resolution {resolution}`) or start from a network "
                           f"of {have}² or less")


def run_training(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, target_kimg: float,
                 resume_from: str | Path | None = None, device: str = "cpu",
                 progress_fn: Callable[[dict], None] | None = None,
                 abort_fn: Callable[[], bool] | None = None,
                 summary_fn: Callable[[dict], None] | None = None,
                 restart_on_change: bool = False, allow_nonfinite: bool = False) -> TrainResult:
    """Train run_dir to target_kimg, continuing from its newest checkpoint. Checkpoints of another run (other
    settings, or trained on other data) are an error, or with restart_on_change are set aside and the run
    starts afresh: what a pipeline that reruns training after its data changed (dvc repro) needs.

    resume_from: a network file (tasks.training.transfer) a new run starts from: G, D and G_ema, with the file's
    architecture; counters and optimizers start afresh. cfg may already be prepared by
    tasks.training.transfer.transfer_config (which refuses contradicting options); otherwise it is prepared here.
    Its weights must be finite unless allow_nonfinite (train.allow_nonfinite)."""
    check_run_dir_outside_data(data_dir, run_dir)
    # Under torchrun each process joins the group and takes its device; alone, this changes nothing.
    device = init_from_env(device)
    # One writer per run folder (tasks/training/lease.py): the first process holds the lease for the group.
    with run_dir_lease(run_dir, command=_command_line()) if dd.rank() == 0 else nullcontext() as lease:
        # A run URL trains in its local cache (tasks/storage/mirror.py), pulled once the lease is held (the previous
        # holder has published by then); each snapshot is published as it is written, the last one before returning.
        local = open_run(run_dir) if dd.rank() == 0 else _cache_of(run_dir)
        dd.barrier()  # the other processes read the pulled checkpoint
        remote = dd.rank() == 0 and is_url(url_of(local))
        if remote:
            progress_fn = _publishing(local, progress_fn)
        if lease is not None:
            progress_fn = guarded(lease, progress_fn)
        result = _train_held(cfg, data_dir, local, target_kimg, resume_from, device, progress_fn, abort_fn,
                             summary_fn, restart_on_change, allow_nonfinite)
        if remote:
            publish(local, final=True)
        return result


def _cache_of(run_dir: str | Path) -> str:
    url = url_of(run_dir)
    return str(cache_dir(url)) if is_url(url) else str(run_dir)


def _publishing(local: str, progress_fn: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """progress_fn, after publishing each snapshot of the run's cache to its URL (in the training thread: the next
    step waits for the upload, retried with backoff while the store is down; see tasks/storage/mirror.py)."""
    def progress(stats: dict) -> None:
        if "checkpoint" in stats:
            publish(local)
        if progress_fn is not None:
            progress_fn(stats)

    return progress


def _command_line() -> str:
    """What the holder of a lease runs, for the refusal's message (shortened)."""
    text = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
    return text if len(text) <= 160 else text[:160] + " ..."


def _train_held(cfg: TrainConfig, data_dir: str | Path, run_dir: str | Path, target_kimg: float,
                resume_from: str | Path | None, device: str | torch.device, progress_fn: Callable[[dict], None] | None,
                abort_fn: Callable[[], bool] | None, summary_fn: Callable[[dict], None] | None,
                restart_on_change: bool, allow_nonfinite: bool = False) -> TrainResult:
    resume_from = resume_from or cfg.transfer_from or None
    if resume_from and not (cfg.transfer_sha256 and cfg.transfer_from == str(resume_from)):
        cfg, _ = transfer_config(cfg, resume_from)
    if not cfg.dataset:
        cfg = replace(cfg, dataset=dataset_hash(data_dir))
    # Another run's checkpoints first: "repeat --resume-from" or "use a new folder" says more than a size error.
    moved, found = _claim(cfg, run_dir, latest_checkpoint(run_dir), restart_on_change)
    # Before any training: a model above its data's size learns nothing.
    if resume_from:
        check_dataset_resolution(data_dir, cfg.resolution, str(resume_from))
    else:
        check_resolution(data_dir, cfg.resolution)
    images = load_images(data_dir, cfg.resolution)
    trainer = Trainer(cfg, images, run_dir, device=device)
    resumed = transferred = None
    notes: list[str] = []
    if found is not None:
        trainer.load_state_dict(found[1])
        resumed = str(found[0])
    elif resume_from:
        nets = load_networks(resume_from, allow_nonfinite=allow_nonfinite)
        if file_sha256(resume_from) != cfg.transfer_sha256:  # replaced between planning and now
            raise TransferError(f"{resume_from} changed while the run was being set up; start it again")
        notes = trainer.start_from(nets)
        transferred = str(resume_from)
    if summary_fn:
        summary_fn({**trainer.summary(), "resumed_from": resumed, "transferred_from": transferred,
                    "transfer_notes": notes})
    stats = trainer.train(target_kimg, progress_fn=progress_fn, abort_fn=abort_fn)
    return TrainResult(resumed_from=resumed, transferred_from=transferred, stats=stats, set_aside=moved,
                       transfer_notes=notes)
