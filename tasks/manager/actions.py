"""The training manager's two units of work: start a request, and check on a running one.

`check` observes (Prefect API + local process + local checkpoints), asks tasks.manager.supervise what to do,
and acts: record progress, mark done, or restart / fail a lost attempt. Every write to the queue is a
compare-and-set on the attempt number it observed, so two managers acting on the same request at once
end with one launch, never two.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from prefect import get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_API_URL

from tasks.manager.run_view import newest_checkpoint
from tasks.training.lease import holder as lease_holder
from tasks.manager.launch import kill_local, launch_local, process_state
from tasks.manager.queue import Request, RequestQueue, open_queue
from tasks.manager.runs import crash_task_runs, find_run, mark_crashed, mark_progress_stopped, seconds_since, start_deployment, view_run
from tasks.manager.supervise import Observation, decide
from tasks.common.settings import ManagerSettings, TrainSettings


class ManagerError(ValueError):
    """The manager cannot work as configured (e.g. no Prefect server that outlives it)."""


@dataclass
class Outcome:
    request_id: str
    action: str      # started | restarted | running | done | failed | skipped (another manager) | held | error
    detail: str = ""
    seen: str = ""   # what the manager observed before it acted (for the pass's artifact)

    def line(self) -> str:
        return f"{self.request_id}  {self.action:<9} {self.detail}".rstrip()


def _train_parameters(req: Request) -> dict:
    """The train flow's parameters for a request: its training settings go in the flow's `settings` object.
    The request id travels as the run's tag (request:<id>), not as a parameter: the train form stays the user's."""
    flat = dict(req.params)
    settings = {k: flat.pop(k) for k in list(flat) if k in TrainSettings.model_fields}
    return {**flat, "settings": {k: v for k, v in settings.items() if v is not None}}


def require_api() -> str:
    """The manager and the runs it launches must share a real Prefect server, not the temporary one
    Prefect starts for a lone process (it would die with the manager, and the runs with it)."""
    url = PREFECT_API_URL.value()
    if not url:
        raise ManagerError("the manager and the training runs it starts need a Prefect server that outlives "
                           "them: start one (`prefect server start`) and set PREFECT_API_URL "
                           "(e.g. http://127.0.0.1:4200/api)")
    return url


def _local_env(settings: ManagerSettings) -> dict[str, str]:
    env = {"PREFECT_API_URL": require_api()}
    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in os.environ:
        # Several heartbeats per staleness window, so a slow step is never mistaken for a lost machine.
        env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(max(30, min(180, int(settings.stale_after_seconds // 3))))
    return env


def start(queue: RequestQueue, req: Request, settings: ManagerSettings) -> Outcome:
    """Claim a queued request's first attempt (compare-and-set) and launch it."""
    found = newest_checkpoint(req.params["run_dir"])
    start_kimg = found[0] if found else req.kimg_done
    # Compare with "queued", never with the state just read: another manager may have started it since.
    seen = "queued" + (f"; its run dir has a checkpoint at {found[0]:g} kimg" if found else "")
    busy = lease_holder(req.params["run_dir"])  # another live run writes there (seen when the folder is visible here)
    if busy is not None:
        return Outcome(req.id, "held", f"its run folder is in use by {busy.describe()}", seen)
    n = queue.claim(req.id, "queued", req.attempts, start_kimg=start_kimg,
                    max_attempts=settings.max_attempts, max_running=settings.max_running)
    if n is None:
        if settings.max_running and len(queue.list(("running",))) >= settings.max_running:
            return Outcome(req.id, "held", f"{settings.max_running} request(s) already running", seen)
        return Outcome(req.id, "skipped", "another manager took it", seen)
    return _with_seen(_launch_claimed(queue, req, n, settings, start_kimg, found is not None), seen)


def _with_seen(outcome: Outcome, seen: str) -> Outcome:
    outcome.seen = seen
    return outcome


def describe(n: int, obs: Observation) -> str:
    """What the manager saw of attempt n, e.g. 'attempt 2: flow run running, alive 12 s ago; process dead'."""
    if obs.run_state is None:
        text = f"attempt {n}: no flow run yet ({obs.since_launch:.0f} s after launch)"
    else:
        text = f"attempt {n}: flow run {obs.run_state.lower()}" + (f" ({obs.run_message})" if obs.run_message else "")
        if obs.since_alive is not None:
            text += f", last sign of life {obs.since_alive:.0f} s ago"
    return text + (f"; process {obs.process}" if obs.process != "unknown" else "")


def check(queue: RequestQueue, req: Request, settings: ManagerSettings) -> Outcome:
    attempt = req.current
    assert attempt is not None  # a launched request
    n = req.attempts
    earlier = {a.flow_run_id for a in req.history[:-1] if a.flow_run_id}
    with get_client(sync_client=True) as client:
        run = find_run(client, req.tag, attempt.flow_run_id, earlier)
        if run is not None and not attempt.flow_run_id:
            queue.record_launch(req.id, n, flow_run_id=str(run.id))
        view = view_run(client, run) if run is not None else None
        process = process_state(attempt.pid, attempt.host, req.id)
        _record_progress(queue, req, view)
        obs = Observation(view.state if view else None, view.message if view else "",
                          seconds_since(view.last_alive) if view else None, time.time() - attempt.started,
                          process)
        decision = decide(obs, n, settings.max_attempts, settings.stale_after_seconds)
        seen = describe(n, obs)
        return _with_seen(_act(queue, req, client, view, decision, settings), seen)


def _act(queue: RequestQueue, req: Request, client, view, decision, settings: ManagerSettings) -> Outcome:
    n = req.attempts
    if decision.action == "wait":
        state = view.state.lower() if view else "launching"
        return Outcome(req.id, "running", f"attempt {n}: {state}" + (f", {view.progress_text}" if view and
                                                                      view.progress_text else ""))
    if decision.action == "done":
        found = newest_checkpoint(req.params["run_dir"])
        if queue.finish(req.id, n, "done", kimg_done=req.kimg_target, last_checkpoint=str(found[1]) if found else None):
            return Outcome(req.id, "done", f"after {n} attempt(s)")
        return Outcome(req.id, "skipped", "another manager finished it")
    if decision.action == "fail":
        if not queue.finish(req.id, n, "failed", decision.reason):
            return Outcome(req.id, "skipped", "another manager handled it")
        _bury(client, req, view, decision.mark_crashed, decision.reason)
        return Outcome(req.id, "failed", decision.reason)
    # restart: claim the next attempt first, so only the manager that wins it buries the old one.
    found = newest_checkpoint(req.params["run_dir"])
    start_kimg = found[0] if found else req.kimg_done
    m = queue.claim(req.id, "running", n, reason=decision.reason, start_kimg=start_kimg,
                    max_attempts=settings.max_attempts)
    if m is None:
        return Outcome(req.id, "skipped", "another manager restarted it")
    _bury(client, req, view, decision.mark_crashed, decision.reason)
    return _launch_claimed(queue, req, m, settings, start_kimg, found is not None, decision.reason)


def _bury(client, req: Request, view, mark: bool, reason: str) -> None:
    """A lost attempt: Crashed in the API, its unfinished task runs too (they would show Running forever), its
    progress artifact saying where it stopped, and its process gone here."""
    if mark and view is not None:
        mark_crashed(client, view.id, reason)
    if view is not None:
        crash_task_runs(client, view.id, reason)
        mark_progress_stopped(client, view.id, reason)
    attempt = req.current
    assert attempt is not None  # a launched request
    kill_local(attempt.pid, attempt.host, req.id)  # a frozen process must not write beside its successor


def _launch_claimed(queue: RequestQueue, req: Request, n: int, settings: ManagerSettings, start_kimg: float,
                    resuming: bool, reason: str = "") -> Outcome:
    """Launch attempt n, which this manager has claimed; the train flow resumes from the newest checkpoint
    in its run dir, so a restart trains only the remaining kimg."""
    resumed = f", resuming at {start_kimg:g} kimg" if resuming else ""
    try:
        if settings.deployment:
            run_id = start_deployment(settings.deployment, _train_parameters(req), req.tag,
                                      idempotency_key=f"{req.id}-attempt-{n}")
            queue.record_launch(req.id, n, flow_run_id=run_id)
            detail = f"attempt {n}: flow run {run_id}{resumed}"
        else:
            pid, log = launch_local(req.params, req.id, n, env=_local_env(settings))
            queue.record_launch(req.id, n, pid=pid, log=str(log))
            detail = f"attempt {n}: pid {pid}, log {log}{resumed}"
    except Exception as e:  # a launch that cannot happen (no deployment, no server) will not heal by retrying
        reason = f"could not launch attempt {n}: {type(e).__name__}: {e}"
        queue.finish(req.id, n, "failed", reason)
        return Outcome(req.id, "failed", reason)
    return Outcome(req.id, "restarted" if n > 1 else "started", f"{detail} ({reason})" if reason else detail)


def _record_progress(queue: RequestQueue, req: Request, view) -> None:
    """kimg done, kimg/s and total from the run's progress event; the newest checkpoint from the run dir
    when it is visible from here (its kimg too, for runs that have not reported progress yet)."""
    found = newest_checkpoint(req.params["run_dir"])
    kimg = total = rate = None
    if view is not None:
        kimg, total, rate = view.kimg, view.total_kimg, view.kimg_per_s
        if kimg is None and view.progress is not None and req.kimg_target:
            kimg = view.progress / 100 * req.kimg_target
    if kimg is None and found is not None:
        kimg = found[0]
    queue.record_progress(req.id, req.attempts, kimg_done=kimg, kimg_per_s=rate, kimg_target=total,
                          last_checkpoint=str(found[1]) if found else None)


@task(name="start-request", task_run_name="start {request_id}", cache_policy=NO_CACHE)
def start_task(queue_file: str, request_id: str, settings: ManagerSettings) -> Outcome:
    queue = open_queue(queue_file)
    return start(queue, queue.get(request_id), settings)


@task(name="check-request", task_run_name="check {request_id}", cache_policy=NO_CACHE)
def check_task(queue_file: str, request_id: str, settings: ManagerSettings) -> Outcome:
    queue = open_queue(queue_file)
    return check(queue, queue.get(request_id), settings)
