"""What a training run shows in the Prefect UI: a progress artifact (kimg done / target) and, after each
stage, a markdown artifact with the stage's losses, ADA p, speed and its newest sample grid.

The text is built by pure functions; the artifact calls are thin. The progress artifact's description is
what the training manager shows as a run's progress; the numbers it keeps (kimg done, target, kimg/s) come
from a `ganflow.train.progress` event sent with every update, never from that text.
"""
from __future__ import annotations

import base64
import io
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from tasks.training.results import StageResult

PREFECT_SIGTERM_CRASH = "termination signal"  # in the message of the state Prefect gives a SIGTERMed task run
THUMB_SIDE = 384  # embedded sample grids are downscaled to this (artifacts live in the server's database)
PROGRESS_EVENT = "ganflow.train.progress"  # payload: progress_payload(); resource: the flow run


def percent(kimg: float, total_kimg: float) -> float:
    # Rounded: kimg is images/1000 and the target a sum of stage lengths, so the end can be 99.99999999999997.
    return max(0.0, min(100.0, round(100.0 * kimg / total_kimg, 6))) if total_kimg > 0 else 0.0


def progress_text(kimg: float, total_kimg: float, stage_label: str = "", stats: dict | None = None) -> str:
    """e.g. 'kimg 12.3 / 25000 · stage 1/5 (cycle 1/5) · 1.52 kimg/s · ADA p 0.041'"""
    parts = [f"kimg {kimg:g} / {total_kimg:g}"]
    if stage_label:
        parts.append(stage_label)
    stats = stats or {}
    if stats.get("kimg_per_s"):
        parts.append(f"{stats['kimg_per_s']:.3g} kimg/s")
    if stats.get("augment_p"):
        parts.append(f"ADA p {stats['augment_p']:.3f}")
    if "stage_resolution" in stats:
        parts.append(f"growing at {stats['stage_resolution']}² alpha {stats['alpha']:.2f}")
    return " · ".join(parts)


def progress_payload(kimg: float, total_kimg: float, kimg_per_s: float | None = None) -> dict[str, float | None]:
    """The numbers of a progress update, as the manager reads them back (tasks.manager.runs.view_run)."""
    return {"kimg": float(kimg), "total_kimg": float(total_kimg),
            "kimg_per_s": float(kimg_per_s) if kimg_per_s else None}


def artifact_key(run_dir: str | Path) -> str:
    """A stable key per run folder (lowercase letters, digits, dashes), so the UI lists a run's stage
    reports as versions of one artifact across attempts."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(run_dir).resolve().name.lower()).strip("-") or "run"
    return f"train-{slug}"[:60]


def _fmt(value, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def thumbnail_data_uri(png: str | Path, side: int = THUMB_SIDE) -> str:
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def stage_markdown(stage_label: str, s: StageResult, total_kimg: float, embed: bool = True) -> str:
    """The stage report: a table of where training is and the newest sample grid."""
    rows = [("kimg", f"{s.kimg:g} / {total_kimg:g} (stage ends at {s.end_kimg:g})"),
            ("loss D", _fmt(s.loss_D)), ("loss G", _fmt(s.loss_G)),
            ("ADA p", _fmt(s.augment_p, ".3f")), ("kimg/s", _fmt(s.kimg_per_s, ".3g")),
            ("stage time", f"{s.seconds:.1f} s"),
            ("resumed from", f"`{s.resumed_from}`" if s.resumed_from else "– (new run)"),
            ("flow run attempt", f"{s.attempt}" + (" (resumed after a preemption)" if s.attempt > 1 else "")),
            ("checkpoint", f"`{s.checkpoint}`" if s.checkpoint else "–"),
            ("sample grid", f"`{s.samples}`" if s.samples else "–")]
    lines = [f"### Training {stage_label}", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    if embed and s.samples and Path(s.samples).is_file():
        lines += ["", f"![samples at {s.kimg:g} kimg]({thumbnail_data_uri(s.samples)})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- Prefect

def create_progress(kimg: float, total_kimg: float, text: str = "") -> UUID:
    from prefect.artifacts import create_progress_artifact

    # mypy: called sync: a UUID
    return create_progress_artifact(progress=percent(kimg, total_kimg),  # type: ignore[return-value]
                                    description=text or progress_text(kimg, total_kimg))


def _this_flow_run():
    """(flow run id, run count) of the running flow, or (None, 0) outside one."""
    from prefect.runtime import flow_run

    return (UUID(str(flow_run.id)), int(flow_run.run_count or 1)) if flow_run.id else (None, 0)


def progress_for_run(kimg: float, total_kimg: float) -> UUID:
    """The flow run's one progress artifact: a rescheduled run (a preemption) runs the flow again under the
    same flow run id, and keeps moving the artifact its first attempt created instead of adding another."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    run_id, _ = _this_flow_run()
    emit_progress(kimg, total_kimg)  # the target, known to the manager before the first step
    if run_id is not None:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type=ArtifactFilterType(any_=["progress"])),
                limit=1)
        if found:
            update_progress(found[0].id, kimg, total_kimg, progress_text(kimg, total_kimg))
            return found[0].id
    return create_progress(kimg, total_kimg)


class _PreemptionCrashLog(logging.Filter):
    """Prefect logs a SIGTERMed task or flow as ERRORs, "Crash detected! Execution was aborted by a termination
    signal." and "Finished in state Crashed(...)". For a training run that is a preemption, handled: the stage has
    checkpointed and the run resumes (rescheduled, or restarted by the manager). Say that, as WARNINGs."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.levelno >= logging.ERROR and PREFECT_SIGTERM_CRASH in text:  # also "Finished in state Crashed(..)"
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            if text.startswith("Crash detected!"):
                record.msg, record.args = PREEMPTED_LOG, ()
        return True


PREEMPTED_LOG = ("Preempted (SIGTERM): the stage wrote a checkpoint and stopped; the run resumes from it when "
                 "rescheduled (a deployment run) or restarted by the training manager")
_FILTER = _PreemptionCrashLog()


def log_preemptions_as_such() -> None:
    """Install the filter on Prefect's flow- and task-run loggers in this process (idempotent)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def note_resumed_attempt(run_dir: str | Path) -> str:
    """On a flow run's later attempt (rescheduled after a SIGTERM): set the stage task runs its earlier attempt
    left Crashed to Cancelled, named Preempted, saying which attempt resumed from which checkpoint; returns
    that sentence for the log ("" on a first attempt)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType
    from prefect.states import State

    from models.run_dir import RunDir

    run_id, attempt = _this_flow_run()
    if run_id is None or attempt <= 1:
        return ""
    newest = RunDir(run_dir).newest_checkpoint()
    ckpt = f"{newest[1]} ({newest[0]:g} kimg)" if newest else "the start (no checkpoint yet)"
    note = f"attempt {attempt} of this flow run resumes from {ckpt}"
    stopped = []
    with get_client(sync_client=True) as client:
        for tr in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))):
            # Only a SIGTERM's crash is a preemption; a stage lost otherwise stays Crashed.
            if tr.state is not None and tr.state.type == StateType.CRASHED and PREFECT_SIGTERM_CRASH in (
                    tr.state.message or ""):
                message = f"stopped by SIGTERM (checkpointed) in an earlier attempt of the flow run; {note}"
                client.set_task_run_state(tr.id, State(type=StateType.CANCELLED, name="Preempted",
                                                       message=message), force=True)
                stopped.append(tr.name)
    return note + (f"; preempted before: {', '.join(stopped)}" if stopped else "")


def update_progress(artifact_id: UUID | str, kimg: float, total_kimg: float, text: str) -> None:
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(UUID(str(artifact_id)), progress=percent(kimg, total_kimg), description=text)


def emit_progress(kimg: float, total_kimg: float, kimg_per_s: float | None = None,
                  flow_run_id: UUID | str | None = None) -> None:
    """Send the progress numbers as an event about the flow run (this one by default): typed JSON that the
    manager reads through the API, wherever the run trains. An artifact holds only a percent and prose."""
    from prefect.events import emit_event

    run_id = flow_run_id or _this_flow_run()[0]
    if run_id is not None:
        emit_event(PROGRESS_EVENT, resource={"prefect.resource.id": f"prefect.flow-run.{run_id}"},
                   payload=progress_payload(kimg, total_kimg, kimg_per_s))


def publish_stage(run_dir: str | Path, stage_label: str, result: StageResult, total_kimg: float) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(stage_markdown(stage_label, result, total_kimg), key=artifact_key(run_dir),
                             description=f"{stage_label}: {result.kimg:g} / {total_kimg:g} kimg")


def dataset_markdown(data: str | Path, meta: dict, curate: tuple[str, str] | None, ui_url: str | None = None) -> str:
    """What the train run trains on: the dataset by content hash, and the curate run that wrote it (a link)."""
    if curate is None:
        made_by = "– (no curate run with this content hash is known to this server)"
    else:
        run_id, name = curate
        made_by = f"[{name}]({ui_url.rstrip('/')}/runs/flow-run/{run_id})" if ui_url else f"{name} (`{run_id}`)"
    rows = [("folder", f"`{data}`"), ("content hash", f"`{meta.get('content_hash', '')}`"),
            ("images", f"{meta.get('count', '?')} at {meta.get('resolution', '?')}²"), ("curate run", made_by)]
    return "\n".join(["### Dataset", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]) + "\n"


def publish_dataset(data: str | Path, meta: dict, curate: tuple[str, str] | None) -> None:
    from prefect.artifacts import create_markdown_artifact
    from prefect.settings import PREFECT_UI_URL

    create_markdown_artifact(dataset_markdown(data, meta, curate, PREFECT_UI_URL.value()),
                             description=f"dataset {meta.get('content_hash', '')[:12]}")


def preempted_message(run_dir: str | Path | None) -> str:
    """What a preempted run's state message and Logs tab say: from which checkpoint it resumes."""
    from models.run_dir import RunDir
    from tasks.storage.mirror import local_of

    newest = RunDir(local_of(run_dir)).newest_checkpoint() if run_dir else None  # a URL: its cache, as trained
    ckpt = f"{newest[1]} ({newest[0]:g} kimg)" if newest else "the start (no checkpoint yet)"
    return f"Preempted (SIGTERM): rescheduled to resume from {ckpt}"


def explain_supervisor_reschedule(run_dir: str | Path) -> str | None:
    """After a SIGTERM stopped a stage (its checkpoint written): when the `prefect flow-run execute` supervisor has
    set the flow run AwaitingRetry (it does so before it signals this process, with no message), give that state
    the message the run's other preemption paths give, naming the checkpoint it resumes from, and log it to the
    run's Logs tab. Returns the message, or None when the run is in any other state (a lone process: Prefect ends
    it Crashed and the on_crashed hook below explains it; a worker already took the run: left alone).
    The state is read, then replaced at once with the same scheduled time: a worker that takes the run within
    those milliseconds would see it rescheduled under it (its own start is then refused by the run folder's
    lease until this process lets go)."""
    from prefect import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.logging.handlers import APILogHandler
    from prefect.states import AwaitingRetry

    run_id, _ = _this_flow_run()
    if run_id is None:
        return None
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
        if state is None or state.type != StateType.SCHEDULED or state.name != "AwaitingRetry" or state.message:
            return None
        message = preempted_message(run_dir)
        client.set_flow_run_state(run_id, AwaitingRetry(message=message,
                                                        scheduled_time=state.state_details.scheduled_time), force=True)
    from prefect import get_run_logger

    get_run_logger().warning(message)
    APILogHandler().flush()  # the engine exits right after this stage: the line must reach the Logs tab
    return message


def reschedule_if_preempted(flow, flow_run, state) -> None:
    """The train flow's on_crashed hook: a deployment run that a SIGTERM stopped (the stage has checkpointed) goes
    back to its work pool at once, AwaitingRetry, saying from which checkpoint it resumes. That is what `prefect
    flow-run execute` does when the signal reaches it first; this covers a SIGTERM that reached the flow's own
    process (`python -m prefect.engine`) first or alone, which Prefect ends Crashed for good. Runs without a
    deployment (a lone `ganflow train --flow`) have no worker to resume them: the manager restarts queued ones.
    Capped at manager.max_attempts executions of the run, as the manager's restarts are."""
    from prefect import get_client
    from prefect.logging.handlers import APILogHandler
    from prefect.logging.loggers import flow_run_logger
    from prefect.states import AwaitingRetry

    from tasks.common.settings import DEFAULT_PARAMS, ManagerSettings, load

    if PREFECT_SIGTERM_CRASH not in (state.message or "") or flow_run.deployment_id is None:
        return
    logger = flow_run_logger(flow_run, flow)
    parameters = flow_run.parameters or {}
    try:
        cap = load(ManagerSettings, parameters.get("params") or DEFAULT_PARAMS).max_attempts
    except (OSError, ValueError):
        cap = ManagerSettings().max_attempts
    if int(flow_run.run_count or 1) >= cap:
        logger.warning("Preempted (SIGTERM) in execution %s of %s (manager.max_attempts): not rescheduled",
                       flow_run.run_count, cap)
        return
    message = preempted_message(parameters.get("run_dir"))
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, AwaitingRetry(message=message), force=True)
    logger.warning(message)
    APILogHandler().flush()  # the process exits right after this hook: the line must reach the run's Logs tab
