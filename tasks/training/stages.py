"""Training in stages: the stage plan (pure), one stage's run with preemption handling, and the @task.

A stage trains a run directory from wherever its newest checkpoint is up to the stage's end kimg, so
every attempt of a stage task (a Prefect retry, a rescheduled run, a restart by the manager) resumes
instead of starting over. StyleGAN2 and StyleGAN3 train in cycles of `train.cycle_kimg`; PGGAN in one stage per
resolution, each ending where models.pggan.GrowthSchedule has faded that resolution in and stabilized it.

Preemption: SIGTERM makes the trainer checkpoint after its current step and stop, then the stage exits.
The trainer runs in a worker thread while the calling (main) thread waits, so that the signal lands in
the waiting thread and never in the middle of a training step:
- under Prefect (its flow engine installs a SIGTERM bridge that raises TerminationSignal), the stage
  keeps Prefect's handler, catches TerminationSignal, lets the trainer checkpoint, and re-raises it.
  Prefect then does what the signal means: Crashed for a lone process (the manager restarts it), or
  nothing when a `prefect flow-run execute` supervisor with PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=
  reschedule sent it (that supervisor has already set the run AwaitingRetry). Replacing Prefect's handler
  would break that: the supervisor's intent is only acknowledged while Prefect's bridge is installed;
  unacknowledged, it SIGKILLs the process at once, before any checkpoint.
- without Prefect's bridge (a plain call from the main thread), the stage installs its own SIGTERM
  handler that sets the abort flag, restores the previous handler afterwards, and raises Preempted.
"""
from __future__ import annotations

import contextvars
import dataclasses
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.utilities.engine import is_prefect_sigterm_handler_installed

from models.arch import ARCHS as FAMILIES, resolved_text
from models.run_dir import RunDir
from models.trainer import TrainConfig
from tasks.training import report as train_report
from tasks.common.settings import ARCHS, TrainSettings
from tasks.common.retry import retry_unless_setup_error
from tasks.storage.mirror import mirror_of, published_kimg
from tasks.storage.url import is_url
from tasks.training.results import StageResult
from tasks.training.run import TrainResult, run_training
from tasks.training.transfer import transfer_config



class Preempted(Exception):
    """SIGTERM stopped a stage outside Prefect; its checkpoint is written, rerunning resumes from it."""


# ---------------------------------------------------------------------------------------------- config

# A training setting whose name is a TrainConfig field reaches the trainer as it is (models/ keeps its own config:
# it never imports tasks); train_config builds only those that differ.
SAME_NAMED = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name in TrainSettings.model_fields)


def train_config(p: TrainSettings, arch: str, resolution: int, seed: int = 0) -> TrainConfig:
    """The trainer's config for one run: the params' settings for this family and resolution (a setting left
    empty stays None: the family's, resolved by models.arch)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    net = {**{k: v for k, v in (("channel_base", p.channel_base), ("channel_max", p.channel_max)) if v}, **p.net}
    same = {k: getattr(p, k) for k in SAME_NAMED}
    return TrainConfig(**{**same, "arch": arch, "resolution": resolution, "seed": seed, "net": net})


def run_config(p: TrainSettings, arch: str, resolution: int, seed: int = 0,
               given: dict[str, Any] | None = None) -> tuple[TrainConfig, list[str]]:
    """train_config, and for a run that starts from a network file (p.resume_from) the file's architecture:
    tasks.training.transfer.transfer_config, which refuses the options in `given` (flag → value, as the user named
    them) that contradict the file. Returns the config and notes for the log."""
    cfg = train_config(p, arch, resolution, seed)
    if not p.resume_from:
        return cfg, []
    return transfer_config(cfg, p.resume_from, given)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------- plan

@dataclass(frozen=True)
class Stage:
    index: int           # 0-based
    count: int           # stages in the plan
    name: str            # "cycle 2/5" | "16x16"
    end_kimg: float      # the stage trains the run up to this many kimg (a total, not a length)

    @property
    def label(self) -> str:
        return f"stage {self.index + 1}/{self.count} ({self.name})"


def stylegan2_stages(total_kimg: float, cycle_kimg: float) -> list[Stage]:
    """Cycles of cycle_kimg up to total_kimg; the last one is shorter when total is not a multiple."""
    if total_kimg <= 0 or cycle_kimg <= 0:
        raise ValueError(f"kimg ({total_kimg}) and cycle_kimg ({cycle_kimg}) must be positive")
    ends, k = [], 0.0
    while k < total_kimg - 1e-9:
        k = min(round(k + cycle_kimg, 6), total_kimg)
        ends.append(k)
    return [Stage(i, len(ends), f"cycle {i + 1}/{len(ends)}", e) for i, e in enumerate(ends)]


def pggan_stages(resolution: int, fade_kimg: float, stabilize_kimg: float,
                 total_kimg: float | None = None) -> list[Stage]:
    """One stage per resolution, 4x4 first, ending at GrowthSchedule.stage_end_kimg (faded in, then
    stabilized). With no total, the run ends when the final resolution is stabilized; a longer total
    extends the last stage at full resolution; a shorter one stops the plan where it falls."""
    from models.pggan import GrowthSchedule, resolution_stage, stage_resolution

    schedule = GrowthSchedule(resolution_stage(resolution), stabilize_kimg=stabilize_kimg, fade_kimg=fade_kimg)
    ends = [schedule.stage_end_kimg(s) for s in range(schedule.max_stage + 1)]
    total = ends[-1] if total_kimg is None else total_kimg
    if total <= 0:
        raise ValueError(f"kimg must be positive, not {total}")
    plan: list[tuple[int, float]] = []
    for s, end in enumerate(ends):
        plan.append((s, min(end, total)))
        if end >= total:
            break
    if total > ends[-1]:
        plan[-1] = (plan[-1][0], total)
    return [Stage(i, len(plan), f"{stage_resolution(s)}x{stage_resolution(s)}", float(end))
            for i, (s, end) in enumerate(plan)]


def plan_stages(arch: str, resolution: int, total_kimg: float | None, p: TrainSettings) -> list[Stage]:
    """The stages up to total_kimg; None: train.kimg, or when that is 0 the family's default length."""
    if total_kimg is None and p.kimg > 0:
        total_kimg = p.kimg
    if arch not in FAMILIES:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {arch!r}")
    if FAMILIES[arch].progressive:
        return pggan_stages(resolution, p.fade_kimg, p.stabilize_kimg, total_kimg)
    return stylegan2_stages(total_kimg if total_kimg is not None else p.cycles * p.cycle_kimg, p.cycle_kimg)


def done_kimg(run_dir: str | Path) -> float:
    """kimg of the newest checkpoint file (by name; whether it loads is the trainer's business). For a run URL not
    opened in this process, the newest its manifest names (tasks/storage/mirror.py)."""
    m = mirror_of(run_dir)
    if m is None and is_url(run_dir):
        return published_kimg(run_dir) or 0.0
    found = RunDir(m.local if m is not None else run_dir).newest_checkpoint()
    return found[0] if found else 0.0


# ---------------------------------------------------------------------------------------------- one stage

@contextmanager
def _sigterm_sets(flag: threading.Event) -> Iterator[None]:
    """While training, SIGTERM sets `flag`, unless Prefect's SIGTERM bridge is installed (see the module
    docstring: it must stay, and its TerminationSignal is caught by the waiting thread instead)."""
    if threading.current_thread() is not threading.main_thread() or is_prefect_sigterm_handler_installed():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: flag.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_stage(cfg: TrainConfig, data: str | Path, run_dir: str | Path, end_kimg: float, *,
              device: str = "cpu", resume_from: str | None = None, allow_nonfinite: bool = False,
              progress_fn: Callable[[dict], None] | None = None,
              report_fn: Callable[[dict], None] | None = None, report_every_s: float = 5.0) -> StageResult:
    """Train run_dir up to end_kimg (resuming from its newest checkpoint); returns what the stage did.

    progress_fn(stats) runs in the training thread after every step (an exception from it fails the
    stage, after any checkpoint of that step). report_fn(stats) runs in the calling thread at most every
    report_every_s seconds with the newest stats: that is where Prefect artifacts are updated.
    """
    t0 = time.perf_counter()
    summaries: list[dict] = []  # run_training's summary_fn: what the run trains (for the log)

    def train(progress: Callable[[dict], None], abort: Callable[[], bool]) -> TrainResult:
        return run_training(cfg, data, run_dir, end_kimg, resume_from=resume_from, device=device,
                            allow_nonfinite=allow_nonfinite, progress_fn=progress, abort_fn=abort, summary_fn=summaries.append)

    result = _train_watched(train, progress_fn, report_fn, report_every_s)
    return _stage_result(result, run_dir, end_kimg, summaries[0] if summaries else None,
                         time.perf_counter() - t0)


def _train_watched(train: Callable[[Callable[[dict], None], Callable[[], bool]], TrainResult],
                   progress_fn: Callable[[dict], None] | None, report_fn: Callable[[dict], None] | None,
                   report_every_s: float) -> TrainResult:
    """train(progress, abort) in a worker thread while this one waits, reports and takes the signals (see the
    module docstring); returns its result, or raises its error or the signal that ended the wait."""
    abort, done = threading.Event(), threading.Event()
    newest: list[dict] = []   # the trainer thread appends; the waiting thread reads the last one
    box: dict[str, Any] = {}

    def progress(stats: dict) -> None:
        newest.append(stats)
        del newest[:-1]
        if progress_fn is not None:
            progress_fn(stats)

    def work() -> None:
        try:
            box["result"] = train(progress, abort.is_set)
        except BaseException as e:  # handed to the waiting thread, which raises it
            box["error"] = e
        finally:
            done.set()

    # Wait on an Event, never Thread.join: in Python 3.11 a signal handler raising inside join() makes the
    # Thread object believe its (still running) thread has stopped.
    # In the caller's context (Prefect's run context): what the trainer's callbacks log (a snapshot's upload waiting
    # for the object store, tasks/storage/mirror.py) reaches the run's log.
    worker = threading.Thread(target=contextvars.copy_context().run, args=(work,), name="ganflow-train-stage",
                              daemon=True)
    interrupt: BaseException | None = None
    reported_at = 0.0
    with _sigterm_sets(abort):
        try:
            worker.start()
            while not done.wait(timeout=0.25):
                if report_fn is not None and newest and time.monotonic() - reported_at >= report_every_s:
                    reported_at = time.monotonic()
                    report_fn(dict(newest[-1]))
        except (TerminationSignal, KeyboardInterrupt) as e:  # Prefect's SIGTERM bridge, or Ctrl-C
            interrupt = e
        finally:
            # Whatever ended the wait (a signal, even one inside report_fn's API call, or report_fn's own
            # error), the trainer checkpoints after its current step and stops before this thread leaves.
            while worker.ident is not None and not done.is_set():
                abort.set()
                try:
                    done.wait(timeout=0.25)
                except (TerminationSignal, KeyboardInterrupt) as e:  # a second signal: keep waiting
                    interrupt = interrupt or e
    if interrupt is not None:
        raise interrupt
    if "error" in box:
        raise box["error"]
    return box["result"]


def _stage_result(result: TrainResult, run_dir: str | Path, end_kimg: float, run_info: dict | None,
                  seconds: float) -> StageResult:
    """What a finished training call did, as the stage's result; Preempted when SIGTERM stopped it."""
    stats = result.stats
    if stats.get("aborted"):
        raise Preempted(f"SIGTERM: stopped at {stats['kimg']:g} kimg after writing {stats['checkpoint']}")
    kimg = stats.get("kimg", done_kimg(run_dir))  # no stats: the stage was already done
    samples = RunDir(run_dir).newest_sample_grid()
    return StageResult.from_stats(end_kimg, kimg, stats, resumed_from=result.resumed_from,
                                  transferred_from=result.transferred_from,
                                  samples=str(samples) if samples else None, seconds=seconds, run_info=run_info)


# ---------------------------------------------------------------------------------------------- Prefect

# A ValueError (no dataset, a bad config, a checkpoint from another version) is not retried: it would fail
# the same way after every retry_delay_seconds.
@task(name="train-stage", task_run_name="{stage.label}", cache_policy=NO_CACHE,  # the result is on disk
      retry_condition_fn=retry_unless_setup_error)
def train_stage_task(cfg: TrainConfig, data: str, run_dir: str, stage: Stage, total_kimg: float,
                     device: str = "cpu", resume_from: str | None = None, allow_nonfinite: bool = False,
                     progress_artifact: str | None = None,
                     progress_fn: Callable[[dict], None] | None = None, report_every_s: float = 5.0) -> StageResult:
    """Train one stage (resuming), keep the progress artifact moving, then publish the stage report.
    progress_fn: an extra per-step callback in the training thread (tests use it to fail an attempt)."""
    from prefect.runtime import flow_run, task_run

    logger = get_run_logger()
    logger.info("%s: training from %g to %g kimg (task attempt %s, flow run attempt %s)", stage.label,
                done_kimg(run_dir), stage.end_kimg, task_run.run_count or 1, flow_run.run_count or 1)

    def report(stats: dict) -> None:
        if not progress_artifact:
            return
        try:
            train_report.update_progress(progress_artifact, stats["kimg"], total_kimg,
                                         train_report.progress_text(stats["kimg"], total_kimg, stage.label, stats))
            train_report.emit_progress(stats["kimg"], total_kimg, stats.get("kimg_per_s"))
        except Exception as e:  # an API hiccup must not stop training; the next report tries again
            logger.warning("could not update the progress artifact: %s: %s", type(e).__name__, e)

    try:
        result = run_stage(cfg, data, run_dir, stage.end_kimg, device=device, resume_from=resume_from,
                           allow_nonfinite=allow_nonfinite, progress_fn=progress_fn, report_fn=report,
                           report_every_s=report_every_s)
    except TerminationSignal:  # checkpointed; a supervisor's reschedule gets its message (which checkpoint)
        try:
            train_report.explain_supervisor_reschedule(run_dir)
        except Exception as e:  # the API gone too (a whole machine going down): the signal still ends the stage
            logger.warning("could not explain the preemption in the run's state: %s: %s", type(e).__name__, e)
        raise
    result = dataclasses.replace(result, attempt=int(flow_run.run_count or 1))
    if result.resumed_from:
        logger.info("%s: resumed from %s", stage.label, result.resumed_from)
    info = result.run_info or {}
    if result.transferred_from:
        logger.info("%s: started from the networks of %s%s", stage.label, result.transferred_from,
                    "".join(f"; {n}" for n in info.get("transfer_notes", [])))
    if info and not result.resumed_from:
        logger.info("%s %s²: G %s parameters, D %s; batch %s, %s loss, ADA target %g, on %s%s%s", info["arch"],
                    info["resolution"], f"{info['G_params']:,}", f"{info['D_params']:,}", info["batch"],
                    info["loss"], info["ada_target"], info["device"],
                    f", D's first {info['freeze_d']} layers frozen" if info.get("freeze_d") else "",
                    resolved_text(info.get("family_defaults", {})))
    report({**result.to_dict(), "kimg_per_s": result.kimg_per_s or 0})
    train_report.publish_stage(run_dir, stage.label, result, total_kimg)
    logger.info("%s: at %g kimg (%.1f s), checkpoint %s", stage.label, result.kimg, result.seconds,
                result.checkpoint)
    return result
