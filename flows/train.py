"""The train flow: plan the stages, then train them one by one, each a retried task that resumes.

    python -m flows.train --data data/curated/photos --run-dir runs/photos --resolution 256 [--kimg 25000]

Every stage task resumes from the run dir's newest checkpoint, so a retry, a rescheduled run or a
restart by the training manager continues where the last one stopped; stages already done are skipped.
SIGTERM checkpoints at once and ends the run (see tasks/training/stages.py for how that meets Prefect).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

from prefect import flow, get_run_logger

from flows.evaluate import evaluate_after_stage
from tasks.training import report as train_report
from tasks.settings import TrainOverrides, TrainSettings, given, load
from tasks.training.stages import done_kimg, plan_stages, resolve_device, run_config, train_stage_task
from tasks.training.run import claim_run_dir


@flow(name="train")
def train_flow(
    data: str,
    run_dir: str,
    settings: TrainOverrides = TrainOverrides(),  # type: ignore[valid-type]  # a model made from TrainSettings
    params: str = "params.yaml",
    restart_on_change: bool = False,
) -> dict:
    """Train a GAN on a curated dataset in stages; every stage resumes from the newest checkpoint.

    Args:
        data: Curated dataset folder (dataset.json + shards/), as `ganflow curate` writes it.
        run_dir: Run folder: its checkpoints (checkpoints/ckpt-KIMG.pt) and sample grids (samples/fakes-KIMG.png)
            go here. One run per folder: a folder holding another run's checkpoints is an error, see restart_on_change.
        settings: Training settings for this run, each with its bounds; an empty one keeps params.yaml's value
            (section train). kimg: total thousand images (0 = the stage plan's length). resume_from: a network file
            to start from, whose architecture is the run's (leave arch and resolution empty, or they must agree).
            ada_target, given here, applies to pggan too; params.yaml's only to stylegan2/3.
        params: Settings file; section `train` holds every setting not given in settings.
        restart_on_change: When run_dir holds checkpoints of another run (other settings or data), move them to
            run_dir/superseded/N/ and start afresh, instead of failing. Nothing is deleted.
    """
    logger = get_run_logger()
    train_report.log_preemptions_as_such()  # a SIGTERM's "Crash detected!" ERROR reads as the preemption it is
    named = given(settings)
    ada_target = named.pop("ada_target", None)  # given, it applies to any family (run_config)
    p = load(TrainSettings, params, **named)
    cfg, notes = run_config(p, p.arch, p.resolution, p.seed, ada_target=ada_target, given=named)
    for note in notes:
        logger.info(note)
    arch, resolution = cfg.arch, cfg.resolution
    stages = plan_stages(arch, resolution, None, p)
    total = stages[-1].end_kimg
    dev = resolve_device(p.device)
    # Before the plan reads the run dir's kimg: another run's checkpoints would count as this run's stages done.
    set_aside = claim_run_dir(cfg, data, run_dir, restart_on_change)
    if set_aside:
        logger.info("%s held another run's checkpoints: moved to %s, starting afresh", run_dir, set_aside)
    start = done_kimg(run_dir)
    resumed = train_report.note_resumed_attempt(run_dir)
    if resumed:
        logger.info(resumed)
    progress = train_report.progress_for_run(start, total)
    logger.info("%s %s² to %g kimg in %d stage(s) on %s%s", arch, resolution, total, len(stages), dev,
                f", resuming at {start:g} kimg" if start else "")

    results = []
    for stage in stages:
        if stage.end_kimg <= start:
            logger.info("%s: done before this run (%g kimg), skipped", stage.label, stage.end_kimg)
            continue
        stage_task = train_stage_task.with_options(retries=p.retries, retry_delay_seconds=p.retry_delay_seconds)
        results.append({"stage": stage.label, **stage_task(cfg, data, run_dir, stage, total, device=dev,
                                                           resume_from=p.resume_from or None,
                                                           progress_artifact=str(progress))})
        results[-1]["evaluate"] = evaluate_after_stage(run_dir, data, params, dev)  # FID per new snapshot
    return {"run_dir": run_dir, "arch": arch, "resolution": resolution, "total_kimg": total,
            "kimg": done_kimg(run_dir), "stages": results}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.train", description=(
        "Run the train flow: train in stages (StyleGAN2 cycles, PGGAN resolutions), every stage resuming "
        "from RUN's newest checkpoint. Defaults come from params.yaml, section `train`."))
    p.add_argument("--data", required=True, metavar="DIR", help="curated dataset (dataset.json + shards/)")
    p.add_argument("--run-dir", required=True, metavar="RUN", help="run folder (checkpoints/, samples/)")
    p.add_argument("--resolution", type=int, metavar="N", help="training resolution, a power of 2 (default: params)")
    p.add_argument("--arch", choices=["stylegan2", "stylegan3-t", "stylegan3-r", "pggan"],
                   help="network family (default: params)")
    p.add_argument("--kimg", type=float, metavar="K", help="total kimg (default: from params.yaml)")
    p.add_argument("--seed", type=int, help="seed for weights, data order and noise (default: params)")
    p.add_argument("--params", default="params.yaml", metavar="FILE", help="settings file (default: params.yaml)")
    p.add_argument("--snapshot-kimg", type=float, metavar="S", help="checkpoint every S kimg (default: params)")
    p.add_argument("--ada-target", type=float, metavar="T", help="ADA target, 0 = off (default: params)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: params)")
    p.add_argument("--resume-from", metavar="FILE", help="transfer learning: start from this network file "
                                                          "(.pt or NVIDIA .pkl), its architecture included")
    p.add_argument("--freeze-d", type=int, metavar="N", help="Freeze-D: keep D's first N layers fixed")
    p.add_argument("--request-id", metavar="ID", help="the training manager's request id (tags the flow run)")
    return p


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without a Prefect server configured, a flow starts a temporary one; Prefect gives it 20 s, which a busy
    # laptop (or a `dvc repro` next to other work) can exceed.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from prefect import tags

    from models.data import DatasetError
    from tasks.params import ParamsError

    run_tags = [f"request:{args.request_id}"] if args.request_id else []
    # Once Prefect has reported a SIGTERM (the stage has checkpointed), it re-sends the signal to the handler
    # it found: exit through SystemExit then, so cleanup runs (a temporary Prefect server is stopped, not leaked).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with tags(*run_tags):  # the tag is on the flow run from its creation: the manager finds it at once
            result = train_flow(data=args.data, run_dir=args.run_dir, params=args.params, settings=TrainOverrides(
                resolution=args.resolution, arch=args.arch, kimg=args.kimg, seed=args.seed,
                snapshot_kimg=args.snapshot_kimg, ada_target=args.ada_target, device=args.device,
                resume_from=args.resume_from, freeze_d=args.freeze_d))
    except (ParamsError, DatasetError, ValueError, FileNotFoundError) as e:
        print(f"python -m flows.train: error: {e}", file=sys.stderr)
        return 2
    for s in result["stages"]:
        resumed = f"resumed from {s['resumed_from']}; " if s["resumed_from"] else ""
        resumed += f"started from the networks of {s['transferred_from']}; " if s["transferred_from"] else ""
        print(f"{s['stage']}: {resumed}trained to {s['kimg']:g} kimg")
    print(f"trained to {result['kimg']:g} of {result['total_kimg']:g} kimg; checkpoints in {args.run_dir}/checkpoints")
    samples = [s["samples"] for s in result["stages"] if s["samples"]]
    if samples:
        print(f"latest sample grid: {samples[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
