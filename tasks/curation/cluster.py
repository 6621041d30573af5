"""Where the curate flow's batch tasks run: Prefect's task runner on this machine, or a Dask cluster.

Batches go out through a bounded window (at most `window` futures in flight, their results merged as
they come back), so the flow holds neither one future per batch nor any image, whatever the input count.
On Dask (prefect-dask's DaskTaskRunner) a worker that is lost mid-batch has its batch rerun by the
scheduler on another worker; finished images are in the shared cache, so the rerun only redoes the rest.
The raw store and the cache must lie at the same absolute path on every worker: a preflight on each
worker checks that, so a missing mount fails the run in one line before any work.
"""
from __future__ import annotations

import inspect
import os
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tasks.common import progress


class ClusterError(ValueError):
    """The Dask cluster cannot do the work: unreachable scheduler, no workers, or a path a worker cannot see."""


def path_problem(folders: dict[str, str]) -> str | None:
    """None when every folder is there (and the cache is writable), else what is wrong, in a few words."""
    for what, folder in folders.items():
        if not Path(folder).is_dir():
            return f"cannot see the {what} {folder} (no such folder there)"
        if what == "cache" and not os.access(folder, os.W_OK):
            return f"cannot write to the cache {folder}"
    return None


def _where() -> str:
    from distributed import get_worker

    return f"Dask worker {get_worker().address}"


def _worker_path_problem(folders: dict[str, str]) -> str | None:
    """Runs on each worker (Client.run): its view of the folders."""
    return path_problem(folders)


def require_folders(folders: dict[str, str]) -> None:
    """Inside a batch on a Dask worker (one that joined after the preflight): fail in one line, never mark
    images as unreadable because this worker lacks the mount."""
    problem = path_problem(folders)
    if problem:
        raise ClusterError(f"{_where()} {problem}: mount it at the same path on every worker")


def batch_folders(paths: Iterable[str], cache_dir: str) -> dict[str, str]:
    """The folders a batch reads and writes: its inputs' folders (in the raw store) and the cache."""
    found = {str(Path(p).parent) for p in paths}
    return {**{f"raw store folder {i}": f for i, f in enumerate(sorted(found))}, "cache": cache_dir}


class BatchResult:
    """A batch task's results ({image id: result}) as one object. Prefect links each value one level inside a
    task's result to its task run (FlowRunContext.run_results, for lineage) and keeps the links until the flow
    ends: returned as a plain dict, a batch left two entries per image per stage in the flow's memory (37 MB
    at 50k images, not manifest records)."""

    __slots__ = ("results", "__weakref__")

    def __init__(self, results: dict):
        self.results = results


class Batches:
    """Submit a batch task over many batches through a bounded window of futures.

    `runner` is an entered DaskTaskRunner, or None for the flow's own task runner (task.submit)."""

    def __init__(self, runner: Any = None, window: int = 8):
        self.runner = runner
        self.window = max(1, window)

    @property
    def on_dask(self) -> bool:
        return self.runner is not None

    def _submit(self, task, parameters: dict):
        if self.runner is None:
            return task.submit(**parameters)
        return self.runner.submit(task, parameters=parameters)

    def run(self, task, batches: Iterable[list], stage: str, merge: Callable[[dict], None], **kwargs) -> None:
        """Run task(batch, batch_no=k, **kwargs) for every batch (the batch is the task's first parameter, its
        return a BatchResult), calling merge(results) in batch order. On Dask the tasks run in other processes, so the progress
        bar advances here as batches finish."""
        first = next(iter(inspect.signature(task.fn).parameters))
        pending: deque = deque()

        def finish() -> None:
            future, size = pending.popleft()
            merge(future.result().results)
            if self.on_dask:
                progress.advance(stage, size)

        for k, batch in enumerate(batches):
            if len(pending) >= self.window:
                finish()
            pending.append((self._submit(task, {first: batch, "batch_no": k, **kwargs}), len(batch)))
        while pending:
            finish()


@contextmanager
def local_batches(workers: int) -> Iterator[Batches]:
    # Batch tasks run in Prefect's threads and share one process pool: a few batches per core keep it busy.
    yield Batches(None, window=2 * workers + 2)


def _addressed_runner(address: str):
    from prefect_dask import DaskTaskRunner
    from prefect_dask.client import PrefectDaskClient

    class AddressedDaskTaskRunner(DaskTaskRunner):
        """Connects to its address even where this process already has a default Dask client (a notebook,
        a test): prefect-dask 0.3.7 would silently use that client's cluster instead."""

        @property
        def client(self) -> PrefectDaskClient:
            if not self._client:
                self._client = self._exit_stack.enter_context(PrefectDaskClient(self.address, **self.client_kwargs))
            return self._client

    return AddressedDaskTaskRunner(address=address)


# distributed keeps the last `admin.low-level-log-length` (1000) messages of every comm for debugging. On the
# flow's client those are the last 1000 submitted batches, each about 50 kB pickled (its paths and Prefect's
# serialized flow-run context): 50 MB held for nothing once a run has more than 1000 batches. Keep a few.
CLIENT_LOG_LENGTH = 16


# A scheduler must answer within this: a port that accepts and never speaks (or a firewall that swallows packets)
# is a one-line error after seconds, not a silent wait of minutes that SIGTERM cannot cut short.
CONNECT_TIMEOUT_S = 10.0


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Connect to `address` and ask the scheduler who it is, all within `timeout` seconds; ClusterError (one line)
    when it does not answer so, or a tls:// address has no certificates in Dask's configuration."""
    import asyncio
    import concurrent.futures

    import dask

    timeout = timeout or CONNECT_TIMEOUT_S
    scheme = address.split("://", 1)[0] if "://" in address else "tcp"
    if scheme == "tls" and not dask.config.get("distributed.comm.tls.ca-file", None):
        raise ClusterError(f"the Dask scheduler address {address} is tls:// but Dask's configuration names no "
                           "certificates: set distributed.comm.tls.ca-file, .client.cert and .client.key (e.g. "
                           "DASK_DISTRIBUTED__COMM__TLS__CA_FILE), or use tcp://")

    async def identity() -> None:
        from distributed.comm import connect
        from distributed.security import Security

        comm = await connect(address, timeout=timeout, **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})
            await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()

    pool = concurrent.futures.ThreadPoolExecutor(1)  # its own event loop, whatever runs in this thread
    try:
        pool.submit(asyncio.run, identity()).result(timeout=2 * timeout + 5)
    except (OSError, TimeoutError, concurrent.futures.TimeoutError, asyncio.TimeoutError) as e:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                           f"({' '.join(str(e).split()) or type(e).__name__})") from None
    except Exception as e:  # a bad address, a TLS setup distributed refuses: its own one line
        raise ClusterError(f"cannot talk to the Dask scheduler at {address}: {type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]}") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@contextmanager
def dask_batches(address: str, folders: dict[str, str]) -> Iterator[Batches]:
    """Connect to the scheduler at `address`, check every worker sees `folders`, yield Batches on it."""
    import dask

    probe_scheduler(address)
    runner = _addressed_runner(address)
    with _flow_api_for_workers(), runner:
        try:
            with dask.config.set({"distributed.admin.low-level-log-length": CLIENT_LOG_LENGTH,
                                  "distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT_S}s"}):
                client = runner.client  # connects here: its comm's log length is read now
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        threads = preflight(client, folders, address)
        yield Batches(runner, window=2 * threads)


def _flow_api_for_workers():
    """Send the workers' task runs to the flow's Prefect API. With no PREFECT_API_URL the flow reports to a
    temporary server of its own process; prefect-dask hands the settings in force at submission to the
    workers, so that server's URL goes along (else each worker would start a temporary server of its own,
    and the batches would be missing from the flow's runs). Workers on other machines need a server they
    can reach: PREFECT_API_URL (README)."""
    from contextlib import nullcontext

    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        return nullcontext()
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    return temporary_settings({PREFECT_API_URL: server.api_url}) if server.running else nullcontext()


def preflight(client, folders: dict[str, str], address: str) -> int:
    """Every connected worker must see the folders; returns the cluster's task slots (threads)."""
    nthreads = client.nthreads()
    if not nthreads:
        raise ClusterError(f"the Dask scheduler at {address} has no workers: start some with "
                           f"`dask worker {address}`")
    answers = client.run(_worker_path_problem, folders)
    for worker, problem in sorted(answers.items()):
        if problem:
            raise ClusterError(f"Dask worker {worker} {problem}: mount it at the same path on every worker")
    return sum(nthreads.values())
