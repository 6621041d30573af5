"""What the Prefect API says about a training request's flow runs: which run, its state, its last sign
of life and its progress; and the two writes the manager makes: mark a lost run Crashed, run a deployment.

Everything goes through the API alone, so a manager on one machine can watch training on others.
A run's last sign of life is the newest of: its Running state's timestamp, its newest
`prefect.flow-run.heartbeat` event (the flow engine emits one every PREFECT_FLOWS_HEARTBEAT_FREQUENCY
seconds, 180 by default, from a thread beside the flow) and its newest artifact update (the train flow's
progress artifact moves with every few training steps). A SIGKILLed process or a vanished machine stops
all three, while the run stays Running in the API forever.
"""
from __future__ import annotations

import re
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
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
_NUM = r"([0-9][0-9.e+-]*)"
_KIMG = re.compile(rf"kimg {_NUM} / {_NUM}")
_RATE = re.compile(rf"{_NUM} kimg/s")


@dataclass
class RunView:
    id: str
    state: str                  # StateType name: RUNNING, COMPLETED, CRASHED, ...
    message: str
    last_alive: datetime | None
    progress: float | None      # percent, from the run's progress artifact
    progress_text: str          # that artifact's description (the train flow writes kimg done / target there)

    def kimg(self) -> tuple[float | None, float | None, float | None]:
        """(kimg done, total kimg, kimg/s) as the train flow writes them in its progress artifact's
        description ('kimg 12.3 / 25000 · stage 1/5 · 1.52 kimg/s · ...'); None where absent."""
        done = total = rate = None
        if m := _KIMG.search(self.progress_text):
            done, total = float(m.group(1)), float(m.group(2))
        if m := _RATE.search(self.progress_text):
            rate = float(m.group(1))
        return done, total, rate


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
    if state is not None and state.is_running():
        times.append(state.timestamp)
    times.append(_last_heartbeat(client, run))
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
                   progress=progress, progress_text=progress_text or "")


def _last_heartbeat(client: SyncPrefectClient, run: FlowRun) -> datetime | None:
    since = run.start_time or run.created
    page = client.read_events(EventFilter(
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
        # mypy: the occurred filter or its default
        **({"occurred": EventOccurredFilter(since=since)} if since else {})), limit=1)  # type: ignore[arg-type]  # newest first
    return page.events[0].occurred if page.events else None


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
    """Say on the run's progress artifact that it stopped there (it would read as still moving); the kimg
    text stays as it was, so RunView.kimg() still reads it."""
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
