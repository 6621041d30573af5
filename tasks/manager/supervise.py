"""What the training manager does with one running request: a pure decision from what it observed.

No Prefect and no I/O here: the manager flow gathers an `Observation` (the flow run's state from the
Prefect API, its last sign of life, whether a locally launched process still exists) and this module
says wait, done, restart or fail. That keeps the state machine testable on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


Action = Literal["wait", "done", "restart", "fail"]


@dataclass(frozen=True)
class Observation:
    run_state: str | None         # the flow run's StateType name (RUNNING, CRASHED, ...); None = no run found yet
    run_message: str = ""         # the state's message, for the reason
    since_alive: float | None = None  # seconds since the run's last heartbeat, progress update or state change
    since_launch: float = 0.0     # seconds since the manager launched this attempt
    process: Literal["alive", "dead", "unknown"] = "unknown"  # a local launch's process; unknown elsewhere


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    mark_crashed: bool = False    # the API still shows the run as live: set it Crashed before moving on


_WAITING = {"SCHEDULED", "PENDING", "PAUSED", "CANCELLING"}


def lost_reason(obs: Observation, stale_after: float) -> tuple[str, bool] | None:
    """Why this attempt is gone, and whether the API still thinks it is live; None if it is not gone."""
    state = obs.run_state
    if state in ("CRASHED", "FAILED"):
        return f"flow run {state.lower()}" + (f": {obs.run_message}" if obs.run_message else ""), False
    if state == "RUNNING" or state in _WAITING:
        if obs.process == "dead":
            # A SIGKILLed process (OOM killer, preemption) never reports: the API would say Running forever.
            return "train process exited without reporting a final state", True
        if state == "RUNNING" and obs.since_alive is not None and obs.since_alive > stale_after:
            return f"no heartbeat or progress for {obs.since_alive:.0f} s (machine lost?)", True
        return None
    if state is None:
        if obs.process == "dead":
            return "train process exited before it created its flow run (see its log)", False
        if obs.process == "unknown" and obs.since_launch > stale_after:
            return f"no flow run appeared {obs.since_launch:.0f} s after launch", False
        return None
    return None


def decide(obs: Observation, attempt: int, max_attempts: int, stale_after: float) -> Decision:
    if obs.run_state == "COMPLETED":
        return Decision("done")
    if obs.run_state == "CANCELLED":
        # Somebody cancelled it on purpose: restarting would undo their decision.
        return Decision("fail", "cancelled in Prefect" + (f": {obs.run_message}" if obs.run_message else ""))
    lost = lost_reason(obs, stale_after)
    if lost is None:
        return Decision("wait")
    reason, live_in_api = lost
    if attempt < max_attempts:
        return Decision("restart", f"attempt {attempt}: {reason}", live_in_api)
    return Decision("fail", f"gave up after {attempt} of {max_attempts} attempts; last: {reason}", live_in_api)


def decide_unqueued(obs: Observation, run_count: int, max_attempts: int, stale_after: float) -> Decision:
    """A deployment's train run that was not queued through the manager (started from the UI, a schedule, the
    pipeline): a Crashed one (a SIGTERM that reached the flow's own process, a SIGKILL), a silent Running one
    (a lost machine) or one Pending that long (its worker stopped before starting it) is rescheduled, and resumes from its newest checkpoint, up to max_attempts executions of the
    run. A Failed one failed for a reason a rerun would repeat, and is left alone, as is anything else."""
    if obs.run_state == "PENDING":
        # Picked up by a worker that stopped before it started the run (serve.sh stopped mid-run): nobody will.
        if obs.since_alive is None or obs.since_alive <= stale_after:
            return Decision("wait")
        reason, live_in_api = f"pending for {obs.since_alive:.0f} s with no worker executing it", False
    elif obs.run_state not in ("CRASHED", "RUNNING"):
        return Decision("wait")
    elif (lost := lost_reason(obs, stale_after)) is None:
        return Decision("wait")
    else:
        reason, live_in_api = lost
    if run_count < max_attempts:
        return Decision("restart", f"attempt {run_count}: {reason}", live_in_api)
    return Decision("fail", f"gave up after {run_count} of {max_attempts} attempts; last: {reason}", live_in_api)
