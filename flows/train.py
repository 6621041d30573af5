"""The train flow: plan the stages, then train them one by one, each a retried task that resumes.

    ganflow train --flow --data data/curated/photos --run-dir runs/photos --resolution 256 [--kimg 25000]

Every stage task resumes from the run dir's newest checkpoint, so a retry, a rescheduled run or a
restart by the training manager continues where the last one stopped; stages already done are skipped.
SIGTERM checkpoints at once and ends the run (see tasks/training/stages.py for how that meets Prefect); a deployment
run that Prefect ends Crashed for it is rescheduled by the on_crashed hook (tasks/training/report.py). The run holds
its run folder's lease throughout (tasks/training/lease.py): one writer per run folder.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from flows.evaluate import evaluate_after_stage
from tasks.training import report as train_report
from tasks.training.results import TrainedStage, TrainRun
from tasks.common.run_labels import GANFLOW, curate_run_of, dataset_tag, label_this_run, train_run_name
from tasks.common.settings import TrainOverrides, given
from tasks.storage.mirror import open_run, publish
from tasks.training.lease import run_dir_lease
from tasks.training.plan import plan_training
from tasks.training.stages import done_kimg, train_stage_task
from tasks.training.run import claim_run_dir, dataset_meta


@flow(name="train", on_crashed=[train_report.reschedule_if_preempted])  # a SIGTERM to the engine alone: rescheduled
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
        params: Settings file; section `train` holds every setting not given in settings.
        restart_on_change: When run_dir holds checkpoints of another run (other settings or data), move them to
            run_dir/superseded/N/ and start afresh, instead of failing. Nothing is deleted.
    """
    logger = get_run_logger()
    train_report.log_preemptions_as_such()  # a SIGTERM's "Crash detected!" ERROR reads as the preemption it is
    # The plan `ganflow train` makes for the same settings; a dataset this machine lacks is fetched with DVC first.
    plan = plan_training(params, given(settings), data=data, run_dir=run_dir)
    for note in plan.notes:
        logger.info(note)
    cfg, stages, total, dev, p = plan.config, plan.stages, plan.total_kimg, plan.device, plan.settings
    arch, resolution = cfg.arch, cfg.resolution
    # The run says what it is, whoever started it: ganflow's tags, a name from its data and settings, and the
    # dataset (content hash) with the curate run that wrote it.
    meta = dataset_meta(data)
    content = meta.get("content_hash", "")
    label_this_run([GANFLOW, "train", *([dataset_tag(content)] if content else [])],
                   train_run_name(data, arch, resolution, content))
    if content:
        train_report.publish_dataset(data, meta, curate_run_of(content))
    # One writer per run folder, for the whole run (stages, evaluation, setting aside): another live run there
    # is refused at once; this run's stages enter the same lease (tasks/training/lease.py).
    url = run_dir
    with run_dir_lease(url, command="train flow"):
        run_dir = open_run(url)  # a run URL: its local cache, pulled (tasks/storage/mirror.py); a path: itself
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

        results: list[TrainedStage] = []
        for stage in stages:
            if stage.end_kimg <= start:
                logger.info("%s: done before this run (%g kimg), skipped", stage.label, stage.end_kimg)
                continue
            stage_task = train_stage_task.with_options(retries=p.retries, retry_delay_seconds=p.retry_delay_seconds)
            trained = stage_task(cfg, data, run_dir, stage, total, device=dev, resume_from=plan.resume_from,
                                 allow_nonfinite=p.allow_nonfinite,
                                 progress_artifact=str(progress))
            evaluated = evaluate_after_stage(run_dir, data, params, dev)  # FID per new snapshot
            publish(run_dir)  # fid.csv, metrics.json, best.pt to the run URL (nothing for a local run)
            results.append(TrainedStage(stage.label, trained, evaluated))
        # A plain dict at the flow's edge (the run's result, the pipeline flow's and the CLI's input): TrainRun's keys.
        return TrainRun(url, arch, resolution, total, done_kimg(run_dir), tuple(results)).to_dict()

