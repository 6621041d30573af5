"""What the Prefect API says about a training request's flow runs: which run, its state, its last sign
of life and its progress; and the two writes the manager makes: mark a lost run Crashed, run a deployment.

Everything goes through the API alone, so a manager on one machine can watch training on others.
A run's last sign of life is the newest of: its Running state's timestamp, its newest
`prefect.flow-run.heartbeat` event (the flow engine emits one every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
seconds, 180 by default, from a thread beside the flow) and its newest artifact update (the train flow's
progress artifact moves with every few training steps). A SIGKILLed process or a vanished machine stops
all three, while the run stays Running in the API forever. The run's progress in numbers (kimg done, target,
kimg/s) is the payload of its newest `ganflow.train.progress` event, sent with each artifact update.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType, FlowRunFilter,
                                            FlowRunFilterId, FlowRunFilterTags)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from tasks.training.report import PROGRESS_EVENT

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


@dataclass
class RunView:
    id: str
    state: str                  # StateType name: RUNNING, COMPLETED, CRASHED, ...
    message: str
    last_alive: datetime | None
    progress: float | None      # percent, from the run's progress artifact
    progress_text: str          # that artifact's description, shown to people as it is
    kimg: float | None = None   # kimg done, target and kimg/s, from the run's newest progress event
    total_kimg: float | None = None
    kimg_per_s: float | None = None


def find_run(client: SyncPrefectClient, tag: str, known: str | None, exclude: set[str]) -> FlowRun | None:
    """The attempt's flow run: by id once known, else the newest run tagged `tag` that no earlier
    attempt owned (a local launch learns its run id only after the process has created it)."""
    if known:
        try:
            return client.read_flow_run(UUID(known))
        except ObjectNotFound:  # deleted in the UI: the attempt is as good as lost once it is stale
            return None
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag])))
    fresh = [r for r in runs if str(r.id) not in exclude]
    # mypy: the server sets created
    return max(fresh, key=lambda r: r.created) if fresh else None  # type: ignore[arg-type,return-value]


def view_run(client: SyncPrefectClient, run: FlowRun) -> RunView:
    state = run.state
    times: list[datetime | None] = []
    if state is not None and (state.is_running() or state.is_pending()):  # entering either is a sign of life
        times.append(state.timestamp)
    times.append(_last_heartbeat(client, run))
    numbers = _last_event(client, run, PROGRESS_EVENT)
    payload = numbers.payload if numbers is not None else {}
    times.append(numbers.occurred if numbers is not None else None)
    progress = progress_text = None
    for artifact in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])),
            sort=ArtifactSort.UPDATED_DESC, limit=20):
        times.append(artifact.updated)
        if artifact.type == "progress" and progress is None:
            progress, progress_text = _float(artifact.data), artifact.description or ""
    alive = [t for t in times if t is not None]
    return RunView(id=str(run.id), state=state.type.name if state else "PENDING",
                   message=(state.message or "") if state else "", last_alive=max(alive) if alive else None,
                   progress=progress, progress_text=progress_text or "", kimg=_float(payload.get("kimg")),
                   total_kimg=_float(payload.get("total_kimg")), kimg_per_s=_float(payload.get("kimg_per_s")))


def _last_heartbeat(client: SyncPrefectClient, run: FlowRun) -> datetime | None:
    event = _last_event(client, run, HEARTBEAT_EVENT)
    return event.occurred if event is not None else None


def _last_event(client: SyncPrefectClient, run: FlowRun, name: str) -> Event | None:
    """The newest event `name` about the flow run since it started."""
    since = run.start_time or run.created
    events = EventFilter(event=EventNameFilter(name=[name]),
                         resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]))
    if since:  # else EventFilter's own default window (the last day)
        events = events.model_copy(update={"occurred": EventOccurredFilter(since=since)})
    page = client.read_events(events, limit=1)  # newest first
    return page.events[0] if page.events else None


def _float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def seconds_since(t: datetime | None) -> float | None:
    return None if t is None else (datetime.now(timezone.utc) - t).total_seconds()


def mark_crashed(client: SyncPrefectClient, run_id: str, message: str) -> None:
    """Force a lost run to Crashed, so the UI stops showing it Running and nobody waits on it."""
    client.set_flow_run_state(UUID(run_id), Crashed(message=f"ganflow manager: {message}"), force=True)


def crash_task_runs(client: SyncPrefectClient, run_id: str, message: str) -> int:
    """Set the flow run's task runs that never reached a final state (a SIGKILLed stage stays Running) to
    Crashed; returns how many."""
    n = 0
    for tr in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)]))):
        if tr.state is not None and not tr.state.is_final():
            client.set_task_run_state(tr.id, Crashed(message=f"ganflow manager: {message}"), force=True)
            n += 1
    return n


def mark_progress_stopped(client: SyncPrefectClient, run_id: str, reason: str) -> None:
    """Say on the run's progress artifact that it stopped there (it would read as still moving)."""
    for artifact in client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(run_id)]), type=ArtifactFilterType(any_=["progress"]))):
        text = artifact.description or ""
        if " · stopped: " not in text:
            client.update_artifact(artifact.id, ArtifactUpdate(description=f"{text} · stopped: {reason}"))


def start_deployment(name: str, parameters: dict[str, Any], tag: str, idempotency_key: str) -> str:
    """Create a run of deployment `name` for a worker to pick up; returns its id at once (timeout=0).
    The idempotency key makes a repeated call for the same attempt return the same run."""
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, tags=[tag], timeout=0, as_subflow=False,
                         idempotency_key=idempotency_key)
    return str(run.id)  # type: ignore[union-attr]  # called sync: a FlowRun


@dataclass(frozen=True)
class AttemptNow:
    """A running request's current attempt as the Prefect API shows it at this moment."""
    flow_run_id: str | None     # None: no flow run found yet (a local launch that has not created it)
    state: str | None           # StateType name; None with no flow run
    message: str = ""


def current_attempts(client: SyncPrefectClient, requests: list) -> dict[str, AttemptNow]:
    """For each running request (tasks.manager.queue.Request), its current attempt's flow run and state now:
    what `ganflow train status` shows, instead of what the manager's last pass wrote to the queue."""
    found: dict[str, AttemptNow] = {}
    for r in requests:
        attempt = r.current
        if r.state != "running" or attempt is None:
            continue
        earlier = {a.flow_run_id for a in r.history[:-1] if a.flow_run_id}
        run = find_run(client, r.tag, attempt.flow_run_id, earlier)
        state = run.state if run is not None else None
        found[r.id] = AttemptNow(str(run.id) if run is not None else None,
                                 state.type.name if state is not None else ("PENDING" if run is not None else None),
                                 (state.message or "") if state is not None else "")
    return found
