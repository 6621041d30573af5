"""The shared process pool: all workers start at once, results come back in order, and while a cold pool starts
this process works through the first items itself (issue 29: the pool's start-up off the critical path)."""
from __future__ import annotations

import os

import pytest

from tasks.curation import pool


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@pytest.fixture
def cold():
    pool.shutdown()
    yield
    pool.shutdown()


def test_warm_starts_every_worker(cold):
    pool.warm(2)
    _, started = pool._pool(2)
    pids = {f.result(timeout=120) for f in started}
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_cold_pool_gives_ordered_results_and_this_process_works_while_it_starts(cold):
    out = list(pool.imap(square_and_pid, range(40), 2))
    assert [r for r, _ in out] == [x * x for x in range(40)]
    pids = [p for _, p in out]
    here = [p == os.getpid() for p in pids]
    assert here[0], "nothing was done while the workers started"   # spawning takes far longer than one item
    assert not here[-1] and here == sorted(here, reverse=True)     # a prefix here, the rest in the workers
    warm = [p for _, p in pool.imap(square_and_pid, range(40), 2)]
    assert os.getpid() not in warm                                 # a started pool does it all
