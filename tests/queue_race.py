"""A manager's claims in a race, run in spawned processes by tests/test_queue.py: a module of its own, so that a
process imports the queue alone (not the test module's torch and settings) and the race starts in seconds."""
from __future__ import annotations

from tasks.manager.queue import open_queue


def race(phases: list[tuple[str, list[str], int]], start, wins) -> None:
    """Per phase (queue, request ids, max_running): wait for the others, then claim each request in turn; report
    each claim won as (phase, id)."""
    for phase, (spec, ids, max_running) in enumerate(phases):
        q = open_queue(spec)
        start.wait()
        for request_id in ids:
            if q.claim(request_id, "queued", 0, max_running=max_running) is not None:
                wins.put((phase, request_id))
