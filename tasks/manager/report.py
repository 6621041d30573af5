"""The training manager's report of one pass, as markdown for a Prefect artifact: per request, what the
manager saw (queue state, flow run state, last sign of life, the local process) and what it did.

Pure text: the flow publishes it (flows/manager.py), tests read it back through the API.
"""
from __future__ import annotations

from datetime import datetime, timezone

ARTIFACT_KEY = "ganflow-manager"  # one key: each pass is a new version, the UI shows the latest first


def _cell(text: str) -> str:
    return (text or "–").replace("|", "\\|").replace("\n", " ")


def pass_markdown(outcomes: list, queue: str, settings, when: datetime | None = None) -> str:
    """outcomes: tasks.manager.actions.Outcome (request_id, seen, action, detail)."""
    when = when or datetime.now(timezone.utc)
    launch = f"deployment `{settings.deployment}`" if settings.deployment else "local processes"
    running = f"at most {settings.max_running} running at once" if settings.max_running else "no limit on runs"
    lines = [f"### Training manager pass, {when:%Y-%m-%d %H:%M:%S} UTC", "",
             f"Queue `{queue}`; at most {settings.max_attempts} attempt(s) per request, {running}, a Running run "
             f"silent {settings.stale_after_seconds:g} s is lost; launches {launch}.", ""]
    if not outcomes:
        return "\n".join(lines + ["No queued or running requests: nothing to do.", ""])
    lines += ["| request | saw | did | detail |", "|---|---|---|---|"]
    lines += [f"| `{o.request_id}` | {_cell(o.seen)} | **{o.action}** | {_cell(o.detail)} |" for o in outcomes]
    return "\n".join(lines) + "\n"


def pass_summary(outcomes: list) -> str:
    """One line for the artifact's description, e.g. '1 restarted, 2 running'."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.action] = counts.get(o.action, 0) + 1
    return ", ".join(f"{n} {action}" for action, n in counts.items()) or "nothing to do"
