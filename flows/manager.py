"""The training manager flow: one pass over the request queue.

Each pass starts queued requests (up to manager.max_running at once) and checks the running ones
through the Prefect API: Completed → done; Crashed, Failed, or Running with a stale heartbeat (its
process was killed or its machine vanished) → restarted from the newest checkpoint with the remaining
kimg, until manager.max_attempts, then failed with the reason. Deployment train runs that were not queued are
watched too: a Crashed or silent one is rescheduled (AwaitingRetry) and resumes from its checkpoint. Each pass logs its decisions and writes a
markdown artifact (key ganflow-manager): per request, what it saw and what it did. Run it every few minutes (a scheduled
deployment), or with `ganflow manager` (a loop) / `ganflow manager --once` (one pass).
"""
from __future__ import annotations

import signal
import sys
import threading

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.manager.actions import ManagerError, Outcome, check_task, require_api, start_task
from tasks.manager.unqueued import watch_unqueued_task
from tasks.manager.report import ARTIFACT_KEY, pass_markdown, pass_summary
from tasks.manager.queue import open_queue, queue_path
from tasks.common.settings import DEFAULT_PARAMS, ManagerOverrides, ManagerSettings, given, load


@flow(name="manager")
def manager_flow(
    queue: str | None = None,
    params: str = str(DEFAULT_PARAMS),
    settings: ManagerOverrides = ManagerOverrides(),  # type: ignore[valid-type]  # a model made from ManagerSettings
) -> list[str]:
    """One pass of the training manager over the request queue.

    Args:
        queue: Request queue: a SQLite file, or prefect://NAME on the Prefect server (default: $GANFLOW_QUEUE, then
            `manager.queue` in params).
        params: Settings file; the `manager` section is read.
        settings: Manager settings for this pass, each with its bounds; an empty one keeps params.yaml's value
            (the queue is the parameter above, and the deployment's schedule replaces interval_seconds).
    """
    manager = load(ManagerSettings, params, **given(settings))
    path = queue_path(queue, manager.queue)
    require_api()  # before any claim: a request must not be taken that cannot be launched or watched
    logger = get_run_logger()
    outcomes: list[Outcome] = []
    # Running ones first: a slot freed by a finished request is given to a queued one in the same pass.
    for req in open_queue(path).list(("running",)):
        outcomes.append(_isolated(check_task, path, req.id, manager))
    for req in open_queue(path).list(("queued",)):
        outcomes.append(_isolated(start_task, path, req.id, manager))
    # Deployment train runs not queued here (the UI, a schedule, the pipeline): a crashed or silent one is
    # rescheduled to resume from its checkpoint (tasks/manager/unqueued.py).
    watched = watch_unqueued_task(manager, return_state=True)
    outcomes += watched.result() if watched.is_completed() else [
        Outcome("deployment runs", "error", f"{watched.name}: {watched.message}")]
    for o in outcomes:
        logger.info("%s (saw: %s)", o.line(), o.seen or "-")
    if not outcomes:
        logger.info("no queued or running requests in %s", path)
    create_markdown_artifact(pass_markdown(outcomes, path, manager), key=ARTIFACT_KEY,
                             description=f"manager pass: {pass_summary(outcomes)}")
    return [o.line() for o in outcomes]


def _isolated(task, path: str, request_id: str, settings) -> Outcome:
    """One request's trouble (an API hiccup, a bad run dir) must not stop the pass for the others."""
    state = task(path, request_id, settings, return_state=True)
    if state.is_completed():
        return state.result()
    return Outcome(request_id, "error", f"{state.name}: {state.message}")


def run_manager(once: bool, interval: float | None = None, queue: str | None = None, params: str = str(DEFAULT_PARAMS),
                **overrides) -> int:
    """`ganflow manager`: one pass, or a pass every `interval` seconds until Ctrl-C or SIGTERM, which end
    the loop after the pass in progress (never half-way through a launch). The training processes run in
    their own sessions and carry on."""
    settings = load(ManagerSettings, params, **overrides)
    # A queue file that does not open (corrupt, torn, another schema) is one line naming it, said before any
    # flow run (inside one, Prefect would print its traceback first).
    open_queue(queue_path(queue, settings.queue)).list()
    require_api()  # fail before Prefect starts a temporary server for the flow
    every = interval or settings.interval_seconds
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                lines = manager_flow(queue=queue, params=params, settings=ManagerOverrides(**overrides))
            except ManagerError:
                raise
            except Exception as e:  # an unreachable API or a locked disk: report, and try again next pass
                if once:
                    raise
                print(f"manager pass failed: {type(e).__name__}: {e}", file=sys.stderr)
                lines = []
            for line in lines:
                print(line, flush=True)
            if once:
                return 0
            if stop.wait(every):
                print("manager stopped; running requests keep training", file=sys.stderr)
                return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
