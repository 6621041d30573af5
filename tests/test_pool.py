"""The shared process pool: all workers start at once, results come back in order, and while a cold pool starts
this process works through the first items itself (issue 29: the pool's start-up off the critical path)."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from tasks.curation import pool


def square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@pytest.fixture
def cold():
    pool.shutdown()
    yield
    pool.shutdown()


def parent_pid(_: int) -> int:
    return os.getppid()


def test_warm_starts_every_worker(cold):
    before = len(multiprocessing.active_children())
    pool.warm(2)  # returns at once: the workers start in a thread
    deadline = time.monotonic() + 120
    while len(multiprocessing.active_children()) - before < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(multiprocessing.active_children()) - before == 2


def test_later_pools_fork_their_workers_from_one_preloaded_server(cold):
    """Start-up paid once per process: after a shutdown, the next pool's workers come from the same fork server
    (which imported the per-image code once), not from interpreters spawned by this process."""
    first = set(pool.imap(parent_pid, range(8), 2))
    pool.shutdown()
    second = set(pool.imap(parent_pid, range(8), 2))
    assert len(first) == 1 and first == second and os.getpid() not in first


def test_a_cold_pool_gives_ordered_results_and_this_process_works_while_it_starts(cold):
    out = list(pool.imap(square_and_pid, range(40), 2, help_start=True))
    assert [r for r, _ in out] == [x * x for x in range(40)]
    pids = [p for _, p in out]
    here = [p == os.getpid() for p in pids]
    assert here[0], "nothing was done while the workers started"   # spawning takes far longer than one item
    assert not here[-1] and here == sorted(here, reverse=True)     # a prefix here, the rest in the workers
    warm = [p for _, p in pool.imap(square_and_pid, range(40), 2, help_start=True)]
    assert os.getpid() not in warm                                 # a started pool does it all


def test_work_that_loads_models_waits_for_the_workers(cold):
    out = [p for _, p in pool.imap(square_and_pid, range(8), 2)]
    assert os.getpid() not in out


def env_value(name: str) -> str | None:
    return os.environ.get(name)


def test_workers_see_the_environment_of_their_pool_not_of_the_fork_server(cold, monkeypatch):
    """U2NET_HOME set after the fork server started still reaches the workers (rembg's model is found there)."""
    list(pool.imap(env_value, ["HOME", "HOME"], 2))  # the fork server is running
    pool.shutdown()
    monkeypatch.setenv("GANFLOW_POOL_TEST", "set later")
    assert set(pool.imap(env_value, ["GANFLOW_POOL_TEST"] * 4, 2)) == {"set later"}


def test_workers_run_the_copy_of_ganflow_this_process_runs(tmp_path):
    """A script that puts a checkout first on sys.path itself (bench/*.py) gets workers that import that checkout,
    not another installed copy: the fork server imports the per-image code with this process's copy first."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(pool.__file__).resolve().parents[2]
    script = tmp_path / "where.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from tasks.curation import pool\n"
        "def where(_):\n"
        "    import tasks.curation.per_image as m\n"
        "    return m.__file__\n"
        "if __name__ == '__main__':\n"
        "    print(sorted(set(pool.imap(where, range(4), 2))))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str([str(root / "tasks" / "curation" / "per_image.py")])
