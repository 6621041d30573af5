"""The training request queue: a small SQLite file that lives with the project (default runs/queue.sqlite), or,
when several machines run managers, requests kept on the Prefect server they all reach (`prefect://NAME`,
tasks/manager/prefect_queue.py). open_queue picks one from the one setting, manager.queue.

A request moves queued → running → done | failed. `running` covers every attempt: a restart after a crash
is running(attempt n) → running(attempt n+1). Every transition is a compare-and-set on (state, attempts)
inside a `BEGIN IMMEDIATE` transaction (SQLite's write lock), so when two managers look at the same
request at the same moment, exactly one of them wins the claim and launches it; the other sees no row
change and moves on.

Prefect-free: the manager flow reads and writes it, and `ganflow train status` reads it with no server.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol

if TYPE_CHECKING:
    from tasks.manager.prefect_queue import PrefectQueue

DEFAULT_QUEUE = "runs/queue.sqlite"
QUEUE_ENV = "GANFLOW_QUEUE"
STATES = ("queued", "running", "done", "failed")
ACTIVE = ("queued", "running")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id              TEXT PRIMARY KEY,
    created         REAL NOT NULL,
    params          TEXT NOT NULL,            -- JSON: the train flow's parameters
    state           TEXT NOT NULL,            -- queued | running | done | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    flow_run_id     TEXT,                     -- the current attempt's Prefect flow run
    kimg_target     REAL,
    kimg_done       REAL NOT NULL DEFAULT 0,
    kimg_per_s      REAL,
    last_checkpoint TEXT,
    reason          TEXT,                     -- why it failed, or why the last attempt was restarted
    updated         REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    request_id  TEXT NOT NULL REFERENCES requests(id),
    n           INTEGER NOT NULL,
    started     REAL NOT NULL,
    host        TEXT NOT NULL,                -- where the manager that launched it ran
    pid         INTEGER,                      -- local launches: the train process
    log         TEXT,
    flow_run_id TEXT,
    start_kimg  REAL NOT NULL DEFAULT 0,      -- kimg of the checkpoint it resumed from
    ended       REAL,
    outcome     TEXT,
    PRIMARY KEY (request_id, n)
);
"""


class QueueError(ValueError):
    """A request that does not exist, an ambiguous id, or bad request parameters."""


@dataclass
class Attempt:
    n: int
    started: float
    host: str
    pid: int | None
    log: str | None
    flow_run_id: str | None
    start_kimg: float
    ended: float | None
    outcome: str | None


@dataclass
class Request:
    id: str
    created: float
    params: dict[str, Any]
    state: str
    attempts: int
    flow_run_id: str | None
    kimg_target: float | None
    kimg_done: float
    kimg_per_s: float | None
    last_checkpoint: str | None
    reason: str | None
    updated: float
    history: list[Attempt] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return request_tag(self.id)

    @property
    def current(self) -> Attempt | None:
        return self.history[-1] if self.history else None


def request_tag(request_id: str) -> str:
    """The Prefect tag a request's flow runs carry: how the manager finds them through the API."""
    return f"request:{request_id}"


def queue_path(flag: str | None = None, params_value: str | None = None) -> str:
    """--queue beats $GANFLOW_QUEUE beats params.yaml's manager.queue beats runs/queue.sqlite.
    A string, not a Path: a Path would fold prefect://NAME into prefect:/NAME."""
    return str(flag or os.environ.get(QUEUE_ENV) or params_value or DEFAULT_QUEUE)


PREFECT_SCHEME = "prefect://"


def open_queue(spec: str | Path) -> "Queue | PrefectQueue":
    """The queue a manager.queue value names: prefect://NAME (requests on the Prefect server of PREFECT_API_URL,
    which every node reaches), else a SQLite file on this machine's disk."""
    text = str(spec)
    if text.startswith(PREFECT_SCHEME) or text == "prefect:":
        from tasks.manager.prefect_queue import PrefectQueue

        return PrefectQueue(text.removeprefix("prefect:").removeprefix("//"))
    return Queue(text)


class RequestQueue(Protocol):
    """What the manager and the queue commands use of a queue; both backends have it, with the same
    compare-and-set meaning (claim, finish and the record_* writes of a stale attempt return None/False)."""
    where: str

    def list(self, states: tuple[str, ...] | None = STATES) -> list["Request"]: ...
    def get(self, request_id: str) -> "Request": ...
    def submit(self, params: dict[str, Any]) -> "Request": ...
    def claim(self, request_id: str, seen_state: str, seen_attempts: int, *, reason: str | None = None,
              start_kimg: float = 0.0, host: str | None = None, max_attempts: int | None = None,
              max_running: int = 0) -> int | None: ...
    def record_launch(self, request_id: str, attempt: int, *, pid: int | None = None, log: str | None = None,
                      flow_run_id: str | None = None) -> bool: ...
    def record_progress(self, request_id: str, attempt: int, *, kimg_done: float | None = None,
                        kimg_per_s: float | None = None, last_checkpoint: str | None = None,
                        kimg_target: float | None = None) -> bool: ...
    def finish(self, request_id: str, attempt: int, state: str, reason: str | None = None, *,
               kimg_done: float | None = None, last_checkpoint: str | None = None) -> bool: ...


def check_request(params: dict[str, Any]) -> None:
    """The keys a request needs, whichever queue keeps it. The run dir is not checked as a local path: it may be
    a URL, or a folder of the machine that will train."""
    # A run started from a network file (transfer learning) takes its family and resolution from it.
    needed = ("data", "run_dir") if params.get("resume_from") else ("data", "run_dir", "arch", "resolution")
    missing = [k for k in needed if params.get(k) in (None, "")]
    if missing:
        raise QueueError(f"a training request needs {', '.join(missing)}")


def validate_transition(seen_state: str, seen_attempts: int, request_id: str, max_attempts: int | None) -> int:
    """The attempt number a claim would start, or QueueError for a claim that can never be right."""
    if seen_state not in ACTIVE:
        raise QueueError(f"cannot start a request that is {seen_state}")
    n = seen_attempts + 1
    if max_attempts is not None and n > max_attempts:
        raise QueueError(f"request {request_id} already had {seen_attempts} of {max_attempts} attempts")
    return n


_COLUMNS = {"requests": ("id", "created", "params", "state", "attempts", "flow_run_id", "kimg_target", "kimg_done",
                          "kimg_per_s", "last_checkpoint", "reason", "updated"),
            "attempts": ("request_id", "n", "started", "host", "pid", "log", "flow_run_id", "start_kimg", "ended",
                         "outcome")}


class Queue:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.where = str(self.path)
        if self.path.exists() and not self.path.is_file():
            raise QueueError(f"queue file {self.path} is not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._unreadable():
            db = sqlite3.connect(self.path, timeout=30)
            try:
                db.executescript(_SCHEMA)  # commits by itself; IF NOT EXISTS makes it safe to run concurrently
                self._check_schema(db)
            finally:
                db.close()

    @contextmanager
    def _unreadable(self) -> Iterator[None]:
        """SQLite's errors (not a database, a torn file, a locked or read-only one) as one QueueError naming it."""
        try:
            yield
        except sqlite3.Error as e:
            raise QueueError(f"queue file {self.path} is unreadable ({type(e).__name__}: {e})") from None

    def _check_schema(self, db: sqlite3.Connection) -> None:
        """A file of another program (or another version) with tables of these names is refused, not misread."""
        for table, wanted in _COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            missing = [c for c in wanted if c not in have]
            if missing:
                raise QueueError(f"queue file {self.path} is not a ganflow queue: table {table} lacks "
                                 f"{', '.join(missing)}")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: BEGIN IMMEDIATE takes SQLite's write lock before the first read,
        so a compare-and-set's read and write see no other writer in between."""
        with self._unreadable():
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            finally:
                db.close()

    # ------------------------------------------------------------------ reads
    def list(self, states: tuple[str, ...] | None = STATES) -> list[Request]:
        """Requests in `states` (None: every row, also one in a state this version does not know)."""
        with self._tx() as db:
            if states is None:
                rows = db.execute("SELECT * FROM requests ORDER BY created, id").fetchall()
            else:
                rows = db.execute(f"SELECT * FROM requests WHERE state IN ({','.join('?' * len(states))}) "
                                  "ORDER BY created, id", states).fetchall()
            return [self._request(db, r) for r in rows]

    def get(self, request_id: str) -> Request:
        """A request by id or by a unique prefix of its id."""
        with self._tx() as db:
            rows = db.execute("SELECT * FROM requests WHERE id LIKE ? ESCAPE '\\'",
                              (_like_prefix(request_id),)).fetchall()
            exact = [r for r in rows if r["id"] == request_id]
            if exact:
                rows = exact
            if not rows:
                raise QueueError(f"no training request {request_id!r} in {self.path}")
            if len(rows) > 1:
                raise QueueError(f"{request_id!r} matches {len(rows)} requests; give more of the id")
            return self._request(db, rows[0])

    def _request(self, db: sqlite3.Connection, row: sqlite3.Row) -> Request:
        history = [Attempt(**{k: a[k] for k in _COLUMNS["attempts"] if k != "request_id"}) for a in db.execute(
            "SELECT * FROM attempts WHERE request_id = ? ORDER BY n", (row["id"],))]
        values = {k: row[k] for k in _COLUMNS["requests"]}
        try:
            values["params"] = json.loads(values["params"])
            if not isinstance(values["params"], dict):
                raise ValueError("not a JSON object")
        except (TypeError, ValueError) as e:
            raise QueueError(f"queue file {self.path}: request {row['id']!r} has unreadable params ({e})") from None
        return Request(**values, history=history)

    # ------------------------------------------------------------------ transitions
    def submit(self, params: dict[str, Any]) -> Request:
        """Add a queued request; `params` are the train flow's parameters (data, run_dir, arch, ...)."""
        check_request(params)
        request_id = uuid.uuid4().hex[:8]
        now = time.time()
        target = params.get("kimg") or None  # 0 = the stage plan's length: the run reports it (record_progress)
        with self._tx() as db:
            for row in db.execute("SELECT * FROM requests WHERE state IN ('queued', 'running')").fetchall():
                if self._request(db, row).params.get("run_dir") == params["run_dir"]:
                    # Two runs writing checkpoints into one folder would resume from each other's.
                    raise QueueError(f"request {row['id']} already trains into {params['run_dir']}; "
                                     "give this one another --run-dir")
            db.execute("INSERT INTO requests (id, created, params, state, kimg_target, updated) "
                       "VALUES (?, ?, ?, 'queued', ?, ?)",
                       (request_id, now, json.dumps(params, sort_keys=True), target, now))
        return self.get(request_id)

    def claim(self, request_id: str, seen_state: str, seen_attempts: int, *, reason: str | None = None,
              start_kimg: float = 0.0, host: str | None = None, max_attempts: int | None = None,
              max_running: int = 0) -> int | None:
        """Compare-and-set: if the request is still (seen_state, seen_attempts), it becomes running with
        attempt seen_attempts + 1, and that number is returned; otherwise None (another manager won, or
        starting a queued one would make more than max_running requests run at once; 0 = no limit).
        Only the winner may launch the attempt."""
        n = validate_transition(seen_state, seen_attempts, request_id, max_attempts)
        now = time.time()
        with self._tx() as db:
            changed = db.execute(
                "UPDATE requests SET state = 'running', attempts = ?, flow_run_id = NULL, kimg_per_s = NULL, "
                "reason = COALESCE(?, reason), updated = ? WHERE id = ? AND state = ? AND attempts = ? "
                "AND (? = 'running' OR ? <= 0 OR (SELECT COUNT(*) FROM requests WHERE state = 'running') < ?)",
                (n, reason, now, request_id, seen_state, seen_attempts, seen_state, max_running, max_running)).rowcount
            if not changed:
                return None
            if seen_attempts:
                db.execute("UPDATE attempts SET ended = COALESCE(ended, ?), outcome = COALESCE(outcome, ?) "
                           "WHERE request_id = ? AND n = ?", (now, reason or "restarted", request_id, seen_attempts))
            db.execute("INSERT INTO attempts (request_id, n, started, host, start_kimg) VALUES (?, ?, ?, ?, ?)",
                       (request_id, n, now, host or socket.gethostname(), start_kimg))
        return n

    def record_launch(self, request_id: str, attempt: int, *, pid: int | None = None, log: str | None = None,
                      flow_run_id: str | None = None) -> bool:
        """What the launcher knows right after starting attempt `attempt` (a process id, a flow run id)."""
        with self._tx() as db:
            if not self._is_current(db, request_id, attempt):
                return False
            db.execute("UPDATE attempts SET pid = COALESCE(?, pid), log = COALESCE(?, log), "
                       "flow_run_id = COALESCE(?, flow_run_id) WHERE request_id = ? AND n = ?",
                       (pid, log, flow_run_id, request_id, attempt))
            if flow_run_id:
                db.execute("UPDATE requests SET flow_run_id = ?, updated = ? WHERE id = ?",
                           (flow_run_id, time.time(), request_id))
        return True

    def record_progress(self, request_id: str, attempt: int, *, kimg_done: float | None = None,
                        kimg_per_s: float | None = None, last_checkpoint: str | None = None,
                        kimg_target: float | None = None) -> bool:
        with self._tx() as db:
            if not self._is_current(db, request_id, attempt):
                return False
            db.execute("UPDATE requests SET kimg_done = COALESCE(?, kimg_done), kimg_per_s = COALESCE(?, kimg_per_s),"
                       " last_checkpoint = COALESCE(?, last_checkpoint), kimg_target = COALESCE(kimg_target, ?),"
                       " updated = ? WHERE id = ?",
                       (kimg_done, kimg_per_s, last_checkpoint, kimg_target, time.time(), request_id))
        return True

    def finish(self, request_id: str, attempt: int, state: str, reason: str | None = None, *,
               kimg_done: float | None = None, last_checkpoint: str | None = None) -> bool:
        """Compare-and-set running(attempt) → done | failed. False if another manager got there first."""
        if state not in ("done", "failed"):
            raise QueueError(f"a request finishes done or failed, not {state!r}")
        now = time.time()
        with self._tx() as db:
            changed = db.execute(
                "UPDATE requests SET state = ?, reason = ?, kimg_per_s = NULL, updated = ?, "
                "kimg_done = COALESCE(?, kimg_done), last_checkpoint = COALESCE(?, last_checkpoint) "
                "WHERE id = ? AND state = 'running' AND attempts = ?",
                (state, reason, now, kimg_done, last_checkpoint, request_id, attempt)).rowcount
            if changed:
                db.execute("UPDATE attempts SET ended = COALESCE(ended, ?), outcome = ? WHERE request_id = ? AND n = ?",
                           (now, reason or state, request_id, attempt))
        return bool(changed)

    @staticmethod
    def _is_current(db: sqlite3.Connection, request_id: str, attempt: int) -> bool:
        row = db.execute("SELECT state, attempts FROM requests WHERE id = ?", (request_id,)).fetchone()
        return row is not None and row["state"] == "running" and row["attempts"] == attempt


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
