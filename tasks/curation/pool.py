"""One process pool per run for CPU-bound per-image work, shared by all batch tasks.

Batch tasks run in Prefect's thread pool; the image work itself runs here, in processes forked from a
`forkserver` (forking a process that runs Prefect's threads and event loop is unsafe; the fork server is a fresh,
single-threaded process), so all cores are used without oversubscribing them. The fork server imports the
per-image code once per process; every pool after the first forks its workers from it in milliseconds instead
of spawning interpreters that import it again (issue 29: pool start-up paid once per process).
On a Dask worker (`ganflow curate --dask`) the worker's own processes and threads are the cores: the work runs inline there, never in a pool nested inside a worker.
"""
from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import sys
import threading
from pathlib import Path
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pools: dict[int, ProcessPoolExecutor] = {}
_started: dict[int, list[Future]] = {}  # per pool: one no-op per worker, done once that worker has started
_lock = threading.Lock()


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def on_dask_worker() -> bool:
    """True inside a task that a Dask worker runs (distributed is only imported where Dask is used)."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def _one_opencv_thread() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process (or Dask worker thread) per core already: more would only oversubscribe


PER_IMAGE = "tasks.curation.per_image"


def _preload(environ: dict[str, str]) -> None:
    import tasks.curation.per_image  # noqa: F401  (already there when forked from the preloaded fork server)

    # The fork server's environment is the one it started with; a worker sees this pool's (U2NET_HOME...), as a
    # spawned one would.
    os.environ.clear()
    os.environ.update(environ)
    _one_opencv_thread()


def _context() -> multiprocessing.context.BaseContext:
    """forkserver, preloaded with the per-image code, where the platform has it; spawn elsewhere."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PER_IMAGE])
    _start_fork_server()
    return ctx


def _start_fork_server() -> None:
    """Start the fork server (if it is not running) with this process's copy of ganflow first on its path.

    The server imports the preloaded modules with its own sys.path (Python ignores the one it is handed), so a
    process that put a checkout on sys.path itself (bench/*.py) would otherwise fork workers that run another
    installed copy. Called under the pool lock; only the server's start sees the changed PYTHONPATH."""
    from multiprocessing import forkserver

    root = str(Path(__file__).resolve().parents[2])  # the folder that holds tasks/
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root if not old else root + os.pathsep + old
    try:
        forkserver.ensure_running()
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def _start(pool: ProcessPoolExecutor, started: list[Future]) -> None:
    """Start every worker (one no-op each), resolving `started` as they come up. Run in a thread: the first pool of
    a process waits in submit() until the fork server has imported the per-image code (a second or two), and the
    caller works meanwhile (imap's help_start) or goes on with other things (warm)."""
    for placeholder in started:
        try:
            pool.submit(os.getpid).add_done_callback(functools.partial(_relay, target=placeholder))
        except Exception as e:  # a pool shut down while starting: nobody waits for it
            placeholder.set_exception(e)


def _relay(source: Future, target: Future) -> None:
    if source.cancelled():
        target.set_exception(RuntimeError("pool shut down while starting"))
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _pool(workers: int) -> tuple[ProcessPoolExecutor, list[Future]]:
    """The shared pool and its start-up futures. The pool starts a process per submitted task while none is
    idle, so one no-op per worker starts them all at once (one would start one)."""
    with _lock:
        if workers not in _pools:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=_context(), initializer=_preload,
                                       initargs=(dict(os.environ),))
            _pools[workers], _started[workers] = pool, [Future() for _ in range(workers)]
            threading.Thread(target=_start, args=(pool, _started[workers]), name="pool-start", daemon=True).start()
        return _pools[workers], _started[workers]


def warm(workers: int) -> None:
    """Start the worker processes now, so their start-up overlaps other work."""
    workers = resolve_workers(workers)
    if workers > 1:
        _pool(workers)


def shutdown() -> None:
    with _lock:
        for pool in _pools.values():
            pool.shutdown(cancel_futures=True)
        _pools.clear()
        _started.clear()


atexit.register(shutdown)


def imap(fn: Callable[[T], R], items: Iterable[T], workers: int, help_start: bool = False) -> Iterator[R]:
    """Ordered results of fn over items: inline for one worker or one item, else in the shared pool.

    help_start: while no worker of the pool is up yet, this process does the first items itself. Only for work
    that loads no model (the cheap checks): faces/text or rembg would load theirs here for a few images."""
    items = list(items)
    if on_dask_worker():
        _one_opencv_thread()  # the worker's threads are the cores, as the pool's processes are
        workers = 1
    workers = resolve_workers(workers)
    if workers == 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pool, started = _pool(workers)
    done = 0
    while help_start and done < len(items) - 1 and not any(f.done() for f in started):
        yield fn(items[done])  # no worker is up yet (about a second, cold): this process works meanwhile
        done += 1
    rest = items[done:]
    yield from pool.map(fn, rest, chunksize=max(1, len(rest) // (4 * workers)))
