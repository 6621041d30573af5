"""One writer per run folder: a lease with a heartbeat, kept as plain files in RUN/lease/.

Whatever trains into a run folder (`ganflow train`, the train flow, a run the manager started, on any machine
that sees the folder) holds its lease while it writes. A second writer is refused at once (RunDirBusy, one line
naming the holder); a holder that died is taken over: at once when it ran on this machine and its process is gone
(SIGKILL, OOM), otherwise once its heartbeat is older than its ttl (a lost machine, a frozen process).

The protocol, written so that it maps onto an object store (conditional writes, no rename, no file lock):

- RUN/lease/<generation>.json, generation a zero-padded counter: the holder is the newest generation's record.
  A record: {"token", "host", "pid", "flow_run_id", "flow_run_name", "command", "since", "heartbeat", "ttl_s",
  "released"}; times are Unix seconds (wall clocks: machines sharing a folder need roughly synchronised clocks,
  well within ttl_s).
- Acquire: read the newest record; if it is live (not released, heartbeat within its ttl_s, and its process
  not known dead), refuse. Otherwise create generation+1 *exclusively* with the complete record (here a hard
  link of a written temp file, which fails when the name exists; on S3 a PUT with `If-None-Match: *`). Of two
  writers racing for the same generation exactly one wins; the loser re-reads and is refused.
- Heartbeat: every ttl_s / 6 the holder overwrites its own record with a new `heartbeat` (temp + rename here; a
  plain PUT on S3), after checking that no newer generation exists. If one does, it lost the lease (it was taken
  over while frozen): it stops writing (LeaseLost at its next training step) instead of racing the new holder.
- Release: the holder marks its record released. Generations older than the previous one are pruned.
- A later attempt of the same Prefect flow run (rescheduled after a preemption) waits up to ttl_s for its
  earlier attempt, which may still be checkpointing and exiting, instead of being refused.

No Prefect import here: the flow run's id and name are read only when Prefect is already loaded (a flow run).
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator

from models.run_dir import RunDir
from tasks.storage.mirror import url_of
from tasks.storage.url import filesystem, is_url

TTL_S = 60.0          # a holder whose heartbeat is older than this is dead (keep it below manager.stale_after_seconds)
BEATS_PER_TTL = 6     # heartbeats per ttl: a few missed ones (a stalled disk, a loaded machine) are survived
_TMP = ".tmp-"


class RunDirBusy(ValueError):
    """Another live run holds the run folder's lease. A ValueError: a setup error, never worth a retry."""


class LeaseLost(RuntimeError):
    """This process's lease was taken over (it was frozen past its ttl): it must stop writing."""


@dataclass
class LeaseRecord:
    token: str
    host: str
    pid: int
    since: float
    heartbeat: float
    ttl_s: float
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    command: str = ""
    released: bool = False

    def describe(self) -> str:
        """e.g. 'pid 4242 on gpu-3 (flow run 1b2c... "train-sneakers"), since 2026-12-07 21:14:03, heartbeat 4 s ago'"""
        run = f" (flow run {self.flow_run_id}" + (f" {self.flow_run_name!r})" if self.flow_run_name else ")") \
            if self.flow_run_id else ""
        since = datetime.fromtimestamp(self.since).strftime("%Y-%m-%d %H:%M:%S")
        return (f"pid {self.pid} on {self.host}{run}, since {since}, "
                f"heartbeat {max(0.0, time.time() - self.heartbeat):.0f} s ago")


def _flow_run() -> tuple[str | None, str | None]:
    if "prefect" not in sys.modules:  # not inside a flow run; importing Prefect just for this would be slow
        return None, None
    try:
        from prefect.runtime import flow_run

        return (str(flow_run.id), flow_run.name) if flow_run.id else (None, None)
    except Exception:  # outside a run context, or an older Prefect: the lease works without it
        return None, None


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie (a SIGKILLed child not yet reaped) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return False


def is_live(rec: LeaseRecord, now: float | None = None) -> bool:
    """Whether the record's holder may still be writing."""
    if rec.released:
        return False
    if (now or time.time()) - rec.heartbeat > rec.ttl_s:
        return False  # a lost machine or a frozen process
    if rec.host == socket.gethostname():
        if rec.pid == os.getpid():  # ours if this process holds it, else a dead earlier process's that had our pid
            return any(lease.record.token == rec.token for lease, _ in list(_HELD.values()))
        return not _pid_gone(rec.pid)  # its process is gone: SIGKILL, OOM
    return True


class _Files:
    """The lease folder of one run folder: generations, exclusive create, overwrite, listing."""

    def __init__(self, run_dir: str | Path) -> None:
        self.folder = RunDir(run_dir).lease

    def generations(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit())

    def path(self, gen: int) -> Path:
        return self.folder / f"{gen:08d}.json"

    def read(self, gen: int) -> LeaseRecord | None:
        try:
            data = json.loads(self.path(gen).read_text())
            return LeaseRecord(**{k: data[k] for k in LeaseRecord.__dataclass_fields__ if k in data})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):  # torn by hand, or written by another version: live, by its mtime
            try:
                t = self.path(gen).stat().st_mtime
            except OSError:
                return None
            return LeaseRecord(token="?", host="?", pid=0, since=t, heartbeat=t, ttl_s=TTL_S,
                               command=f"unreadable lease file {self.path(gen)}")

    def _temp(self, rec: LeaseRecord) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"{_TMP}{uuid.uuid4().hex}"
        with tmp.open("w") as f:
            f.write(json.dumps(asdict(rec)))
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, gen: int, rec: LeaseRecord) -> bool:
        """Create generation gen with rec, exclusively: False when it exists already (another writer won it)."""
        tmp = self._temp(rec)
        try:
            os.link(tmp, self.path(gen))
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def overwrite(self, gen: int, rec: LeaseRecord) -> None:
        os.replace(self._temp(rec), self.path(gen))

    def prune(self, keep_from: int) -> None:
        for gen in self.generations():
            if gen < keep_from:
                self.path(gen).unlink(missing_ok=True)


class _ObjectFiles:
    """The lease folder of a run URL (s3://.../RUN/lease/): the same protocol on an object store, through fsspec.
    Exclusive create is a conditional PUT (`If-None-Match: *`, which S3, MinIO and moto honour); overwrite is a
    plain PUT. A store that does not refuse the condition would let two writers in: s3fs's 'create' mode says
    which stores do."""

    made_run_dir = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = filesystem(url)
        self.root = f"{root}/{RunDir('x').lease.name}"

    def generations(self) -> list[int]:
        self.fs.invalidate_cache(self.root)
        try:
            names = [str(n).rsplit("/", 1)[-1] for n in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def _key(self, gen: int) -> str:
        return f"{self.root}/{gen:08d}.json"

    def read(self, gen: int) -> LeaseRecord | None:
        try:
            data = json.loads(self.fs.cat_file(self._key(gen)))
            return LeaseRecord(**{k: data[k] for k in LeaseRecord.__dataclass_fields__ if k in data})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):  # written by hand or by another version: live for a ttl from now
            t = time.time()
            return LeaseRecord(token="?", host="?", pid=0, since=t, heartbeat=t, ttl_s=TTL_S,
                               command=f"unreadable lease object {self.url}/lease/{gen:08d}.json")

    def create(self, gen: int, rec: LeaseRecord) -> bool:
        try:
            self.fs.pipe_file(self._key(gen), json.dumps(asdict(rec)).encode(), mode="create")
            return True
        except FileExistsError:
            return False

    def overwrite(self, gen: int, rec: LeaseRecord) -> None:
        self.fs.pipe_file(self._key(gen), json.dumps(asdict(rec)).encode())

    def prune(self, keep_from: int) -> None:
        for gen in self.generations():
            if gen < keep_from:
                try:
                    self.fs.rm_file(self._key(gen))
                except FileNotFoundError:
                    pass


def _lease_files(run_dir: str | Path) -> _Files | _ObjectFiles:
    """The lease folder of a run: at its URL when it has one (its cache is per machine), else on disk."""
    url = url_of(run_dir)
    return _ObjectFiles(url) if is_url(url) else _Files(url)


class Lease:
    """A held lease; its heartbeat thread renews it until release(). `lost` is set when it was taken over."""

    def __init__(self, files: _Files | _ObjectFiles, gen: int, rec: LeaseRecord, beat_s: float, made_run_dir: bool = False) -> None:
        self.files, self.gen, self.record = files, gen, rec
        self.made_run_dir = made_run_dir  # the run folder did not exist before this lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(beat_s,), name="ganflow-run-lease", daemon=True)
        self._thread.start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.renew()
            except Exception:  # a disk hiccup, an object store away (botocore's errors are not OSErrors): the
                continue       # next beat tries again; ttl covers a few misses

    def renew(self) -> None:
        if self.files.generations()[-1:] != [self.gen]:
            self.lost.set()  # a newer generation: somebody took over while this process was frozen
            self._stop.set()
            return
        self.record.heartbeat = time.time()
        self.files.overwrite(self.gen, self.record)

    def check(self) -> None:
        if self.lost.is_set():
            newest = self.files.generations()[-1:]
            holder = self.files.read(newest[0]) if newest else None
            where = self.files.url if isinstance(self.files, _ObjectFiles) else self.files.folder.parent
            raise LeaseLost(f"{where}: this run's lease was taken over"
                            + (f" by {holder.describe()}" if holder else "") + " while it was not heartbeating; "
                            "it stops writing there")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self.lost.is_set() and self.files.generations()[-1:] == [self.gen]:
            self.record.released, self.record.heartbeat = True, time.time()
            self.files.overwrite(self.gen, self.record)
            self._tidy()

    def _tidy(self) -> None:
        """A run refused before it wrote anything (bad settings, data too small) leaves no folder behind: the
        folder this lease made goes again when the lease is all it holds."""
        if isinstance(self.files, _ObjectFiles):
            return
        run_dir = self.files.folder.parent
        if not self.made_run_dir or [p.name for p in run_dir.iterdir()] != [self.files.folder.name]:
            return
        for p in self.files.folder.iterdir():
            p.unlink(missing_ok=True)
        for folder in (self.files.folder, run_dir):
            try:
                folder.rmdir()
            except OSError:  # somebody wrote there meanwhile: leave it
                return


# Leases this process holds, by run folder: a flow holds its run folder's lease for its whole run, and each of its
# stages (run_training, in the same process) enters it again.
_HELD: dict[str, tuple[Lease, int]] = {}
_HELD_LOCK = threading.Lock()


def holder(run_dir: str | Path) -> LeaseRecord | None:
    """The live holder of run_dir's lease, None when nobody holds it."""
    files = _lease_files(run_dir)
    gens = files.generations()
    rec = files.read(gens[-1]) if gens else None
    return rec if rec is not None and is_live(rec) else None


def acquire(run_dir: str | Path, ttl_s: float = TTL_S, command: str = "") -> Lease:
    """Take run_dir's lease, or raise RunDirBusy naming its live holder (see the module docstring)."""
    files = _lease_files(run_dir)
    made_run_dir = isinstance(files, _Files) and not Path(run_dir).exists()
    flow_run_id, flow_run_name = _flow_run()
    waited_until = time.time() + ttl_s
    while True:
        gens = files.generations()
        gen = gens[-1] if gens else 0
        rec = files.read(gen) if gen else None
        if rec is not None and is_live(rec):
            if flow_run_id and rec.flow_run_id == flow_run_id and time.time() < waited_until:
                time.sleep(min(1.0, ttl_s / BEATS_PER_TTL))  # this flow run's earlier attempt, still exiting
                continue
            raise RunDirBusy(f"{url_of(run_dir)} is in use by another run: {rec.describe()}"
                             + (f" ({rec.command})" if rec.command else "") + "; wait for it, stop it, or train "
                             f"into another run folder (a holder that died is taken over after {rec.ttl_s:g} s "
                             "without a heartbeat, at once on its own machine)")
        now = time.time()
        mine = LeaseRecord(token=uuid.uuid4().hex, host=socket.gethostname(), pid=os.getpid(), since=now,
                           heartbeat=now, ttl_s=ttl_s, flow_run_id=flow_run_id, flow_run_name=flow_run_name,
                           command=command)
        if files.create(gen + 1, mine):
            files.prune(gen)  # keep the previous holder's record beside ours, for whoever looks
            return Lease(files, gen + 1, mine, ttl_s / BEATS_PER_TTL, made_run_dir)
        # Another writer created that generation first: read it, and most likely be refused.


@contextmanager
def run_dir_lease(run_dir: str | Path, ttl_s: float = TTL_S, command: str = "") -> Iterator[Lease]:
    """Hold run_dir's lease for the block; re-entered by the same process, it is the same lease."""
    url = url_of(run_dir)
    key = url if is_url(url) else str(Path(url).resolve())
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            _HELD[key] = (held[0], held[1] + 1)
    if held is not None:
        try:
            yield held[0]
        finally:
            _leave(key)
        return
    lease = acquire(run_dir, ttl_s, command)
    with _HELD_LOCK:
        _HELD[key] = (lease, 1)
    try:
        yield lease
    finally:
        _leave(key)


def _leave(key: str) -> None:
    with _HELD_LOCK:
        lease, n = _HELD[key]
        if n > 1:
            _HELD[key] = (lease, n - 1)
            return
        del _HELD[key]
    lease.release()


def guarded(lease: Lease, progress_fn: Callable[[dict], None] | None) -> Callable[[dict], None]:
    """progress_fn, raising LeaseLost at the first training step after the lease was taken over."""
    def progress(stats: dict) -> None:
        lease.check()
        if progress_fn is not None:
            progress_fn(stats)

    return progress
