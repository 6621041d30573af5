"""The training request queue kept on the Prefect server (`manager.queue: prefect://NAME`): every node that reaches
the API (PREFECT_API_URL) sees the same requests, and a machine that loses its disk loses no request.

Each request is a few Prefect Variables named `ganflowq__NAME__KIND__ID[__N]`:
  req      its parameters and submit time (written once);
  after N  what followed attempt N (N = 0: the queued request): a claim that starts attempt N + 1, or the end
           (done | failed). Written once, by create: the server keeps variable names unique (a unique constraint;
           a second create of the name answers 409), so of two managers that race to restart or finish attempt N,
           exactly one creates `after N`, and only that one acts. This is the SQLite queue's compare-and-set on
           (state, attempts): the request's state and attempt count are read off this chain.
  launch N what the launcher knows of attempt N (pid, log, flow run id): merged, last writer wins;
  prog N   progress the manager read of attempt N (kimg done, kimg/s, newest checkpoint): last writer wins;
  dir      the run folder's current request: a second request into the same folder is refused while this one
           is queued or running;
  slot K   K < manager.max_running: one of the slots a running request holds (created at its first claim,
           deleted when it ends), so two managers never start more than max_running between them. A manager that
           dies between taking a slot and its claim leaves one behind: freed when its request ends, or after
           SLOT_CLAIM_SECONDS if the request is still queued.

Variables have no compare-and-set update, so nothing that decides who starts a request is ever updated: only
created once, or deleted by id (a slot or dir record that a racing manager replaced has a new id, and the delete
of the old id misses it).
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import time
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

from tasks.manager.queue import (ACTIVE, STATES, Attempt, QueueError, Request, check_request,
                                 validate_transition)

PREFIX = "ganflowq"
DEFAULT_NAME = "ganflow"
NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")  # no "_": "__" separates a record name's parts
PAGE = 200  # the server's default page limit
# A claim takes a slot, then creates its `after` record within a second or two. A slot still naming a queued
# request this long after was left by a manager that died in between: free it (generous for clock skew).
SLOT_CLAIM_SECONDS = 300.0


def _stale_slot(slot, state: str | None) -> bool:
    """A slot no running request needs: its request ended (or is gone), or it stayed queued past a claim's time."""
    if state not in ACTIVE:
        return True
    if state == "queued" and slot.created is not None:
        return time.time() - slot.created.timestamp() > SLOT_CLAIM_SECONDS
    return False


class PrefectQueue:
    def __init__(self, name: str = ""):
        name = name.strip("/") or DEFAULT_NAME
        if not NAME_RE.fullmatch(name):
            raise QueueError(f"queue prefect://{name}: the name takes lowercase letters, digits and dashes "
                             "(e.g. prefect://photos)")
        from prefect.settings import PREFECT_API_URL

        self.name = name
        self.where = f"prefect://{name}"
        self.url = PREFECT_API_URL.value()
        if not self.url:  # Prefect would start a temporary server, and the requests would vanish with it
            raise QueueError(f"queue {self.where} is kept on a Prefect server: set PREFECT_API_URL to one every "
                             "manager reaches (e.g. http://HOST:4200/api)")

    # ------------------------------------------------------------------ records
    def _name(self, kind: str, *parts: object) -> str:
        return "__".join([PREFIX, self.name, kind, *map(str, parts)])

    @contextmanager
    def _client(self) -> Iterator[Any]:
        """A client of the configured server; an unreachable one or an error answer is one QueueError naming it."""
        import httpx
        from prefect import get_client

        try:
            with get_client(sync_client=True) as client:
                yield client
        except (httpx.HTTPError, OSError) as e:
            raise QueueError(f"queue {self.where}: the Prefect API at {self.url} did not answer "
                             f"({type(e).__name__}: {e})") from None

    def _records(self, client, request_id: str = "") -> dict[str, Any]:
        """Name → Variable for this queue's records (one request's, with request_id), paged through the API."""
        from prefect.client.schemas.objects import Variable

        like = "__".join([PREFIX, self.name, ""]) + (f"%__{request_id}" if request_id else "")
        found: dict[str, Any] = {}
        while True:
            response = client.request("POST", "/variables/filter", json={
                "limit": PAGE, "offset": len(found), "variables": {"name": {"like_": like}}, "sort": "NAME_ASC"})
            response.raise_for_status()
            page = Variable.model_validate_list(response.json())
            found.update((v.name, v) for v in page)
            if len(page) < PAGE:
                break
        head = "__".join([PREFIX, self.name, ""])  # `_` is a LIKE wildcard: keep exactly this queue's names
        return {k: v for k, v in found.items() if k.startswith(head)}

    @staticmethod
    def _create(client, name: str, value: dict[str, Any]) -> Any | None:
        """Create a record once; None if the name exists (another manager created it first)."""
        from prefect.client.schemas.actions import VariableCreate
        from prefect.exceptions import ObjectAlreadyExists

        try:
            return client.create_variable(VariableCreate(name=name, value=value, tags=["ganflow-queue"]))
        except ObjectAlreadyExists:
            return None

    @staticmethod
    def _delete(client, variable) -> None:
        """Delete exactly this record (by id): one that a racing manager replaced since is left alone."""
        client.request("DELETE", f"/variables/{variable.id}")  # 404: already gone, which is what was wanted

    def _merge(self, client, name: str, values: dict[str, Any]) -> None:
        """Informational records: create, or update with the new values that are not None."""
        from prefect.client.schemas.actions import VariableUpdate

        values = {k: v for k, v in values.items() if v is not None}
        if self._create(client, name, values) is None:
            old = client.read_variable_by_name(name)
            merged = {**(old.value if old is not None and isinstance(old.value, dict) else {}), **values}
            client.update_variable(VariableUpdate(name=name, value=merged))

    # ------------------------------------------------------------------ reading a request off its records
    def _requests(self, records: dict[str, Any]) -> list[Request]:
        by_id: dict[str, dict[str, Any]] = {}
        for name, var in records.items():
            parts = name.split("__")[2:]  # KIND, ID[, N]
            if len(parts) >= 2 and parts[0] not in ("slot", "dir"):
                by_id.setdefault(parts[1], {})[("__".join(parts[:1] + parts[2:]))] = var.value
        requests = [self._request(rid, recs) for rid, recs in by_id.items() if "req" in recs]
        return sorted(requests, key=lambda r: (r.created, r.id))

    def _request(self, rid: str, recs: dict[str, Any]) -> Request:
        """The request as the SQLite queue's row would read: state and attempts from the `after` chain, progress
        from the newest attempt's `prog` record that has it, an end's numbers over both."""
        req = recs["req"]
        if not isinstance(req, dict) or not isinstance(req.get("params"), dict):
            raise QueueError(f"queue {self.where}: request {rid!r} has unreadable params")
        state, n, reason = "queued", 0, None
        end: dict[str, Any] = {}
        history: list[Attempt] = []
        while (after := recs.get(f"after__{n}")) is not None:
            if history:  # what ended attempt n
                history[-1].ended = after["at"]
                history[-1].outcome = after.get("reason") or ("restarted" if after["kind"] == "claim"
                                                              else after["state"])
            if after["kind"] != "claim":
                state, reason, end = after["state"], after.get("reason"), after
                break
            n += 1
            state, reason = "running", after.get("reason") or reason
            launch = recs.get(f"launch__{n}") or {}
            history.append(Attempt(n, after["at"], after["host"], launch.get("pid"), launch.get("log"),
                                   launch.get("flow_run_id"), after.get("start_kimg", 0.0), None, None))
        progs = [recs[f"prog__{k}"] for k in range(n, 0, -1) if isinstance(recs.get(f"prog__{k}"), dict)]

        def newest(key: str) -> Any:
            if end.get(key) is not None:
                return end[key]
            return next((p[key] for p in progs if p.get(key) is not None), None)

        current = history[-1] if history else None
        mine = recs.get(f"prog__{n}")  # kimg/s is the running attempt's only
        rate = mine.get("kimg_per_s") if state == "running" and isinstance(mine, dict) else None
        times = [req["created"], *(a.started for a in history), end.get("at", 0.0), *(p.get("at", 0.0) for p in progs)]
        return Request(id=rid, created=req["created"], params=req["params"], state=state, attempts=n,
                       flow_run_id=current.flow_run_id if current else None,
                       kimg_target=req.get("kimg_target") or newest("kimg_target"),
                       kimg_done=newest("kimg_done") or 0.0, kimg_per_s=rate,
                       last_checkpoint=newest("last_checkpoint"), reason=reason, updated=max(times),
                       history=history)

    # ------------------------------------------------------------------ reads
    def list(self, states: tuple[str, ...] | None = STATES) -> list[Request]:
        """Requests in `states` (None: every one, also one in a state this version does not know)."""
        with self._client() as client:
            requests = self._requests(self._records(client))
        return [r for r in requests if states is None or r.state in states]

    def get(self, request_id: str) -> Request:
        """A request by id or by a unique prefix of its id."""
        with self._client() as client:
            exact = self._requests(self._records(client, request_id)) if re.fullmatch(r"[0-9a-f]{8}",
                                                                                       request_id) else []
            rows = [r for r in exact if r.id == request_id] or [
                r for r in self._requests(self._records(client)) if r.id.startswith(request_id)]
        if not rows:
            raise QueueError(f"no training request {request_id!r} in {self.where}")
        if len(rows) > 1:
            raise QueueError(f"{request_id!r} matches {len(rows)} requests; give more of the id")
        return rows[0]

    def _current(self, client, request_id: str) -> Request | None:
        found = [r for r in self._requests(self._records(client, request_id)) if r.id == request_id]
        return found[0] if found else None

    # ------------------------------------------------------------------ transitions
    def submit(self, params: dict[str, Any]) -> Request:
        """Add a queued request; `params` are the train flow's parameters (data, run_dir, arch, ...)."""
        check_request(params)
        request_id = uuid.uuid4().hex[:8]
        now = time.time()
        record = {"created": now, "params": params, "kimg_target": params.get("kimg") or None}
        if len(json.dumps(record)) > 4900:
            raise QueueError(f"queue {self.where}: this request's settings take more than the 5000 characters a "
                             "Prefect variable holds")
        with self._client() as client:
            self._take_run_dir(client, request_id, str(params["run_dir"]))
            self._create(client, self._name("req", request_id), record)
        return self.get(request_id)

    def _take_run_dir(self, client, request_id: str, run_dir: str) -> None:
        """Two runs writing checkpoints into one folder would resume from each other's: one active request per
        folder, decided by who creates its `dir` record; a record left by an ended request is replaced."""
        name = self._name("dir", hashlib.sha256(run_dir.encode()).hexdigest()[:16])
        for _ in range(2):
            if self._create(client, name, {"request": request_id, "run_dir": run_dir}) is not None:
                return
            holder = client.read_variable_by_name(name)
            if holder is None:
                continue
            other = self._current(client, holder.value.get("request", ""))
            if other is not None and other.state in ACTIVE:
                raise QueueError(f"request {other.id} already trains into {run_dir}; give this one another --run-dir")
            self._delete(client, holder)
        raise QueueError(f"another request was submitted into {run_dir} at the same moment; give this one another "
                         "--run-dir")

    def claim(self, request_id: str, seen_state: str, seen_attempts: int, *, reason: str | None = None,
              start_kimg: float = 0.0, host: str | None = None, max_attempts: int | None = None,
              max_running: int = 0) -> int | None:
        """As Queue.claim: attempt seen_attempts + 1 if the request is still (seen_state, seen_attempts) and
        this manager creates its `after` record first; None otherwise (or when max_running slots are taken)."""
        n = validate_transition(seen_state, seen_attempts, request_id, max_attempts)
        with self._client() as client:
            req = self._current(client, request_id)
            if req is None or (req.state, req.attempts) != (seen_state, seen_attempts):
                return None
            slot = self._take_slot(client, request_id, max_running) if seen_state == "queued" and max_running else None
            if seen_state == "queued" and max_running and slot is None:
                return None
            after = {"kind": "claim", "at": time.time(), "host": host or socket.gethostname(),
                     "start_kimg": start_kimg, "reason": reason}
            if self._create(client, self._name("after", request_id, seen_attempts), after) is None:
                if slot is not None:
                    self._delete(client, slot)  # another manager won the claim, and holds its own slot
                return None
        return n

    def _take_slot(self, client, request_id: str, max_running: int):
        """One of max_running slots for a request's first attempt, or None when all are held by running
        requests. A slot left by an ended request (its manager died before giving it back) is freed here."""
        for _ in range(2):
            records = self._records(client)
            slots = {k: v for k, v in records.items() if k.split("__")[2] == "slot"}
            states = {r.id: r.state for r in self._requests(records)}
            stale = [v for v in slots.values() if _stale_slot(v, states.get(v.value.get("request")))]
            for v in stale:
                self._delete(client, v)
            held = {k for k, v in slots.items() if v not in stale}
            if len(held) >= max_running:
                return None
            for k in range(max_running):
                name = self._name("slot", k)
                if name not in held and (made := self._create(client, name, {"request": request_id})) is not None:
                    return made
        return None

    def _release_slots(self, client, request_id: str) -> None:
        for name, v in self._records(client).items():
            if name.split("__")[2] == "slot" and v.value.get("request") == request_id:
                self._delete(client, v)

    def _is_current(self, client, request_id: str, attempt: int) -> bool:
        req = self._current(client, request_id)
        return req is not None and req.state == "running" and req.attempts == attempt

    def record_launch(self, request_id: str, attempt: int, *, pid: int | None = None, log: str | None = None,
                      flow_run_id: str | None = None) -> bool:
        with self._client() as client:
            if not self._is_current(client, request_id, attempt):
                return False
            self._merge(client, self._name("launch", request_id, attempt),
                        {"pid": pid, "log": log, "flow_run_id": flow_run_id})
        return True

    def record_progress(self, request_id: str, attempt: int, *, kimg_done: float | None = None,
                        kimg_per_s: float | None = None, last_checkpoint: str | None = None,
                        kimg_target: float | None = None) -> bool:
        with self._client() as client:
            if not self._is_current(client, request_id, attempt):
                return False
            self._merge(client, self._name("prog", request_id, attempt),
                        {"attempt": attempt, "at": time.time(), "kimg_done": kimg_done, "kimg_per_s": kimg_per_s,
                         "last_checkpoint": last_checkpoint, "kimg_target": kimg_target})
        return True

    def finish(self, request_id: str, attempt: int, state: str, reason: str | None = None, *,
               kimg_done: float | None = None, last_checkpoint: str | None = None) -> bool:
        """running(attempt) → done | failed, if this manager creates attempt's `after` record first."""
        if state not in ("done", "failed"):
            raise QueueError(f"a request finishes done or failed, not {state!r}")
        with self._client() as client:
            if not self._is_current(client, request_id, attempt):
                return False
            end = {"kind": "end", "at": time.time(), "state": state, "reason": reason, "kimg_done": kimg_done,
                   "last_checkpoint": last_checkpoint}
            if self._create(client, self._name("after", request_id, attempt), end) is None:
                return False
            self._release_slots(client, request_id)
        return True
