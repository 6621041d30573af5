"""One process pool per run for CPU-bound per-image work, shared by all batch tasks.

Batch tasks run in Prefect's thread pool; the image work itself runs here, in `spawn`ed processes
(forking a process that runs Prefect's threads and event loop is unsafe), so all cores are used
without oversubscribing them. On a Dask worker (`ganflow curate --dask`) the worker's own processes and
threads are the cores: the work runs inline there, never in a pool nested inside a worker.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import sys
import threading
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


def _preload() -> None:
    import tasks.curation.per_image  # noqa: F401  (workers pay their imports once, at start)

    _one_opencv_thread()


def _pool(workers: int) -> tuple[ProcessPoolExecutor, list[Future]]:
    """The shared pool and its start-up futures. A spawn pool starts a process per submitted task while none is
    idle, so one no-op per worker starts them all at once (one would start one)."""
    with _lock:
        if workers not in _pools:
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_preload)
            _pools[workers], _started[workers] = pool, [pool.submit(os.getpid) for _ in range(workers)]
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
