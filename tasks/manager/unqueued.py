"""The train runs of deployments that were not queued through the manager (the UI's Run button, a schedule, the
pipeline deployment): the manager watches them too, so a preemption that Prefect itself does not reschedule (a
SIGTERM that reached the flow's engine process before or without its `prefect flow-run execute` supervisor, a
SIGKILL, a lost machine) still ends in a run that resumes.

Such a run is found by its tags (`ganflow` and `train`, which the deployments and every train run carry) and its
deployment; a queued request's run (tag request:ID) is the queue's business. Rescheduling sets the run
AwaitingRetry (what `prefect flow-run retry` does): a worker of its pool executes it again under the same flow run
id, and the train flow resumes from the run folder's newest checkpoint, moving the same progress artifact on.
"""
from __future__ import annotations

from uuid import UUID

from prefect import get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState,
                                            FlowRunFilterStateType, FlowRunFilterTags)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import AwaitingRetry

from tasks.manager.run_view import newest_checkpoint
from tasks.common.settings import ManagerSettings
from tasks.manager.actions import Outcome
from tasks.manager.queue import request_tag
from tasks.manager.runs import crash_task_runs, mark_crashed, mark_progress_stopped, seconds_since, view_run
from tasks.manager.supervise import Observation, decide_unqueued

TRAIN_TAGS = ("ganflow", "train")  # on every train run, whatever started it
GAVE_UP = "ganflow manager: gave up"


def unqueued_runs(client) -> list[FlowRun]:
    """Deployment train runs that are Crashed, Running or Pending, without a request tag."""
    runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        tags=FlowRunFilterTags(all_=list(TRAIN_TAGS)), deployment_id=FlowRunFilterDeploymentId(is_null_=False),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED, StateType.RUNNING, StateType.PENDING]))),
        limit=200)
    return [r for r in runs if not any(t.startswith(request_tag("")) for t in r.tags)
            and not (r.state and (r.state.message or "").startswith(GAVE_UP))]


def resume_point(run: FlowRun) -> str:
    """Where the rescheduled run resumes, when its run folder is visible from here."""
    run_dir = (run.parameters or {}).get("run_dir")
    newest = newest_checkpoint(run_dir) if run_dir else None
    return f"{newest[1]} ({newest[0]:g} kimg)" if newest else "its run folder's newest checkpoint"


def watch(client, run: FlowRun, settings: ManagerSettings) -> Outcome | None:
    view = view_run(client, run)
    obs = Observation(view.state, view.message, seconds_since(view.last_alive))
    decision = decide_unqueued(obs, max(int(run.run_count or 1), 1), settings.max_attempts,
                               settings.stale_after_seconds)
    name = f"run {run.name}"
    seen = f"deployment run {run.id}: {view.state.lower()}" + (f" ({view.message})" if view.message else "")
    if decision.action == "wait":
        return None
    crash_task_runs(client, view.id, decision.reason)  # a SIGKILLed stage would show Running forever
    if decision.action == "fail":  # Crashed for good, with a message that keeps later passes away (GAVE_UP)
        mark_crashed(client, view.id, decision.reason)
        mark_progress_stopped(client, view.id, decision.reason)
        return Outcome(name, "failed", decision.reason, seen)
    if decision.mark_crashed:  # the API still says Running: Crashed first, so the run's history says what happened
        mark_crashed(client, view.id, decision.reason)
    message = f"ganflow manager: preempted or lost ({decision.reason}); rescheduled to resume from {resume_point(run)}"
    client.set_flow_run_state(UUID(view.id), AwaitingRetry(message=message), force=True)
    return Outcome(name, "restarted", message.removeprefix("ganflow manager: "), seen)


@task(name="watch-deployment-runs", cache_policy=NO_CACHE)
def watch_unqueued_task(settings: ManagerSettings) -> list[Outcome]:
    with get_client(sync_client=True) as client:
        return [o for run in unqueued_runs(client) if (o := watch(client, run, settings)) is not None]
