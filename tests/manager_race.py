"""`python -m tests.manager_race GATE NAME ARGS...`: `ganflow ARGS...` (a manager pass) that meets the other manager
of a test at each queued request's claim, so the two race on the same request at the same moment, every time.

The meeting point is the last step before the queue decides: for the SQLite queue, after reading the request
queued (its claim is one transaction); for the Prefect queue, just before creating the record that claims it
(after both have read it queued). GATE is a folder both managers see; NAME tells them apart.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


def meet(gate: Path, me: str, point: str) -> None:
    """Wait for the other manager at `point`: at the first one long enough for it to start (a loaded machine),
    then briefly (if it failed, this one finishes its pass alone and the test says why)."""
    first = not any(gate.glob(f"*.{me}"))
    (gate / f"{point}.{me}").touch()
    deadline = time.time() + (240.0 if first else 30.0)
    while len(list(gate.glob(f"{point}.*"))) < 2 and time.time() < deadline:
        time.sleep(0.02)


def main() -> int:
    gate, me, argv = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    from tasks.manager.prefect_queue import PrefectQueue
    from tasks.manager.queue import Queue

    sqlite_get, prefect_create = Queue.get, PrefectQueue._create

    def get(self, request_id):
        req = sqlite_get(self, request_id)
        if req.state == "queued":
            meet(gate, me, req.id)
        return req

    def create(client, name, value):
        if value.get("kind") == "claim":
            meet(gate, me, name)
        return prefect_create(client, name, value)

    Queue.get = get
    PrefectQueue._create = staticmethod(create)
    from flows.cli import main as ganflow

    return ganflow(argv)


if __name__ == "__main__":
    sys.exit(main())
