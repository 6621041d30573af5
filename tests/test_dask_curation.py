"""The curate flow on a real Dask cluster (distributed.LocalCluster, worker processes) under the real Prefect API.

One 2-worker cluster serves the module. A worker is killed for real (SIGKILL of its own process during a
batch), and a worker that cannot see the raw store is a real `dask worker` process in its own mount
namespace, where an empty tmpfs hides the test's folder: what a worker on a machine without the mount sees.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from flows.curate import curate
from tasks.curation.cluster import ClusterError
from tests.conftest import ROOT

distributed = pytest.importorskip("distributed")
OUTPUTS = ("manifest.jsonl", "dataset.json")


def _image(rng: np.random.Generator, side: int = 200) -> np.ndarray:
    """Coloured rectangles on a coloured ground with grain: sharp, colourful, unique."""
    img = np.empty((side, side, 3), np.uint8)
    img[:] = rng.integers(40, 216, 3)
    for _ in range(8):
        x0, y0 = rng.integers(0, side - 40, 2)
        w, h = rng.integers(20, 80, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    return np.clip(img.astype(np.int16) + rng.integers(-30, 31, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """14 unique small photos-to-be, plus an exact copy, a near duplicate, a blurry, a grey, a broken and a
    non-image file."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(17)
    for k in range(14):
        Image.fromarray(_image(rng)).save(d / f"img{k:02d}.jpg", quality=92)
    shutil.copy(d / "img00.jpg", d / "copy-of-img00.jpg")
    Image.open(d / "img01.jpg").resize((190, 190), Image.Resampling.LANCZOS).save(d / "img01-small.jpg", quality=75)
    Image.open(d / "img02.jpg").resize((24, 24)).resize((200, 200), Image.Resampling.BILINEAR).save(d / "soft.jpg")
    Image.open(d / "img03.jpg").convert("L").convert("RGB").save(d / "grey.jpg")
    (d / "broken.jpg").write_bytes((d / "img04.jpg").read_bytes()[:600])
    (d / "notes.jpg").write_text("not an image")  # its reason's detail names the file: no path may leak in
    return d


@pytest.fixture(scope="module")
def small_params(tmp_path_factory) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["curate"].update(resolution=64, batch_size=4, dask_batch_size=4, workers=1, matte="none", shard_size=6,
                           dask_address="")
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  worker_dashboard_address=None) as c, distributed.Client(c) as client:
        yield c.scheduler_address, client


def _curate(folder: Path, work: Path, params: Path, **kw) -> Any:  # a dict, or a State with return_state
    return curate(source="path", input_path=str(folder), out=str(work / "out"), raw_root=str(work / "raw"),
                  cache_dir=str(work / "cache"), params_path=str(params), **kw)


def _files(out: Path) -> dict[str, bytes]:
    names = [*OUTPUTS, *sorted(str(p.relative_to(out)) for p in (out / "shards").glob("*.tar"))]
    return {name: (out / name).read_bytes() for name in names}


@pytest.fixture(scope="module")
def local_run(prefect_api, folder, small_params, tmp_path_factory) -> dict[str, bytes]:
    work = tmp_path_factory.mktemp("local")
    result = _curate(folder, work, small_params)
    assert result["count"] >= 10 and result["inputs"] == 20
    return _files(work / "out")


def test_dask_run_is_byte_identical_to_the_local_run(prefect_api, folder, small_params, cluster, local_run,
                                                     tmp_path):
    """Also on batches of dask_batch_size (8), not the local pool's batch_size (4): same bytes, fewer tasks."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    address, _ = cluster
    state = _curate(folder, tmp_path, small_params, settings={"dask_address": address, "dask_batch_size": 8},
                    return_state=True)
    result = state.result()
    assert _files(tmp_path / "out") == local_run
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
            any_=[state.state_details.flow_run_id])))
    cheap = sorted(r.name for r in runs if r.name.startswith("screen-cheap-"))
    assert len(cheap) == -(-result["inputs"] // 8), cheap  # 20 inputs: 3 batches of 8 (batch_size 4 would be 5)
    assert len(result["shards"]) >= 2
    reasons = result["reasons"]
    assert reasons["duplicate"] == 2 and reasons["blurry"] == 1 and reasons["grayscale"] == 1


class KillOnce(distributed.WorkerPlugin):  # type: ignore[name-defined]  # distributed comes from importorskip
    """Makes the cheap screen SIGKILL its own worker process at that worker's 3rd image, once in the cluster
    (the marker file, created exclusively, says who died); every screened image is logged as 'pid path'."""

    name = "ganflow-test-kill-once"

    def __init__(self, marker: str, log: str):
        self.marker, self.log = marker, log

    def setup(self, worker) -> None:
        import tasks.curation.screen as screen

        self.original = original = screen.screen_cheap_one
        marker, log, seen = self.marker, self.log, []

        def screen_then_maybe_die(path, params):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {path}\n")
            seen.append(path)
            if len(seen) == 3:
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    pass
                else:
                    os.write(fd, str(os.getpid()).encode())
                    os.close(fd)
                    os.kill(os.getpid(), signal.SIGKILL)  # real process death, mid-batch
            return original(path, params)

        screen.screen_cheap_one = screen_then_maybe_die

    def teardown(self, worker) -> None:
        import tasks.curation.screen as screen

        screen.screen_cheap_one = self.original


def test_a_worker_killed_mid_batch_loses_nothing(prefect_api, folder, small_params, cluster, local_run, tmp_path):
    address, client = cluster
    marker, log = tmp_path / "killed", tmp_path / "screened.log"
    client.register_plugin(KillOnce(str(marker), str(log)))
    try:
        _curate(folder, tmp_path, small_params, settings={"dask_address": address})
    finally:
        client.unregister_worker_plugin(KillOnce.name)
    assert marker.exists(), "no worker was killed"
    assert _files(tmp_path / "out") == local_run
    lines = [line.split(" ", 1) for line in log.read_text().splitlines()]
    dead = marker.read_text()
    by_dead = [path for pid, path in lines if pid == dead]
    assert len(by_dead) == 3  # it died during its 3rd image, in its first batch (4 images)
    # The images it finished were cached and never screened again; the one it died on was redone elsewhere.
    counts = {path: sum(1 for _, p in lines if p == path) for path in by_dead}
    assert [counts[p] for p in by_dead] == [1, 1, 2]
    client.wait_for_workers(2, timeout=60)


def test_a_worker_that_cannot_see_the_raw_store_fails_before_any_work(prefect_api, folder, small_params, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to give a worker its own view of the filesystem")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"user+mount namespaces are not allowed here: {probe.stderr.decode().strip()}")
    work = tmp_path / "shared"
    work.mkdir()
    with distributed.LocalCluster(n_workers=0, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        # This worker sees an empty tmpfs where the client sees `work`: a machine without the mount.
        script = f'mount -t tmpfs none "{work}" && exec "{sys.executable}" -m distributed.cli.dask_worker ' \
                 f'{c.scheduler_address} --nthreads 1 --no-nanny --no-dashboard'
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        worker = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                                  env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=90)
            with pytest.raises(ClusterError) as err:
                _curate(folder, work, small_params, settings={"dask_address": c.scheduler_address})
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    message = str(err.value)
    assert "\n" not in message
    assert f"cannot see the raw store {(work / 'raw').resolve()}" in message and "Dask worker tcp://" in message
    assert not any((work / "cache").rglob("*.json")), "work was done before the check"


def test_the_shipped_dask_settings_reach_a_real_scheduler_and_worker(tmp_path):
    """deployments/dask/ (README: DASK_CONFIG for `dask scheduler` and `dask worker`) takes effect in Dask's own
    loader: a misspelt key there would be silently ignored, and the workers would run with distributed's
    defaults (a kernel-bound allocator, the profiler, long logs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "MALLOC_"))}
    env.update(DASK_CONFIG=str(ROOT / "deployments" / "dask"), PYTHONPATH=str(ROOT))
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 90
        while not info.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                       str(info), "--nthreads", "1", "--no-dashboard"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with distributed.Client(scheduler_file=str(info), timeout=90) as client:
            client.wait_for_workers(1, timeout=90)

            def settings() -> dict:
                import dask

                return {"trim": os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                        "profile": dask.config.get("distributed.worker.profile.enabled"),
                        "log": dask.config.get("distributed.admin.low-level-log-length")}

            (worker,) = client.run(settings).values()
            scheduler = client.run_on_scheduler(settings)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)
    assert worker == {"trim": None, "profile": False, "log": 16}
    assert scheduler["log"] == 16


def test_an_unreachable_scheduler_is_one_clear_error(prefect_api, folder, small_params, tmp_path):
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ClusterError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
            _curate(folder, tmp_path, small_params, settings={"dask_address": "tcp://127.0.0.1:9"})


# ---------------------------------------------------------------------------------------------- dedup at scale

def _indexed(cands, d, monkeypatch):
    """near_duplicates through its band index (the kept-set scan made unusable while it runs)."""
    import tasks.curation.dedup as dedup

    with monkeypatch.context() as m:
        m.setattr(dedup, "near_duplicates_scan", lambda *a: pytest.fail("the band index fell back to the scan"))
        return dedup.near_duplicates(cands, d)


def test_dedup_finds_the_same_pairs_on_the_demos_planted_duplicates(tmp_path, monkeypatch):
    from tasks.curation.dedup import near_duplicates_scan
    from tasks.common.settings import CurateSettings, load
    from tasks.curation.per_image import screen_cheap_one
    from tasks.ingestion.sources.demo import write_demo
    from tasks.curation.verdicts import dedup_candidates

    table = write_demo(tmp_path)
    params = load(CurateSettings, ROOT / "params.yaml")
    cheap = {name: screen_cheap_one(str(tmp_path / name), params) for name in sorted(table)}
    cands = dedup_candidates({n: r for n, r in cheap.items() if "phash" in r["scores"]})
    near = _indexed(cands, params.dup_max_distance, monkeypatch)
    assert near == near_duplicates_scan(cands, params.dup_max_distance)
    assert near["reposts/hubble-850px.jpg"][0] == "photos/hubble_deep_field.jpg"
    for d in (0, 3, 8, 11):
        assert _indexed(cands, d, monkeypatch) == near_duplicates_scan(cands, d)


def test_dedup_matches_the_kept_set_scan_on_clustered_hashes(monkeypatch):
    """Clusters of hashes a few bits apart (ties in distance and in quality included), against the scan."""
    import random

    from tasks.curation.dedup import Candidate, near_duplicates, near_duplicates_scan

    rng = random.Random(5)
    cands = []
    for i in range(1500):
        base = rng.getrandbits(64)
        for k in range(rng.choice([1, 1, 2, 4])):
            h = base
            for _ in range(rng.randint(0, 12)):
                h ^= 1 << rng.randrange(64)
            cands.append(Candidate(f"{i:05d}-{k}", f"{h:016x}", rng.choice([64, 128]), float(rng.randint(0, 3))))
    for d in (0, 1, 4, 6, 7, 11):
        near = _indexed(cands, d, monkeypatch)
        assert near == near_duplicates_scan(cands, d)
        assert len(near) > (200 if d >= 4 else 0)
    assert near_duplicates(cands, 20) == near_duplicates_scan(cands, 20)  # a radius past the index: the scan


# ---------------------------------------------------------------------------------------------- bounded window

def test_batches_go_out_through_a_bounded_window(prefect_api):
    """Batch k is submitted only once batch k - window has been merged: the flow never holds more futures."""
    import itertools

    from prefect import flow, task

    from tasks.curation.cluster import BatchResult, Batches

    clock = itertools.count()  # a shared sequence number: happens-before without timing
    started: dict[int, int] = {}
    merged: dict[int, int] = {}

    @task
    def record(items: list, batch_no: int = 0) -> BatchResult:
        started[batch_no] = next(clock)
        return BatchResult({batch_no: items})

    @flow
    def windowed() -> dict:
        out: dict = {}

        def merge(result: dict) -> None:
            (k, _), = result.items()
            merged[k] = next(clock)
            out.update(result)

        Batches(None, window=3).run(record, ([k] for k in range(12)), "test", merge)
        return out

    out = windowed()
    assert out == {k: [k] for k in range(12)}
    assert list(merged) == list(range(12))  # merged in batch order
    for k in range(3, 12):
        assert started[k] > merged[k - 3]


def test_batch_results_leave_no_per_image_trace_in_the_flow(prefect_api):
    """Prefect links every value one level inside a task's result to its task run for the rest of the flow run;
    a batch's results come back as one BatchResult, so the flow holds one link per batch, not two per image
    (at 10^6 images that was most of a GB beside the manifest records)."""
    from prefect import flow, task
    from prefect.context import FlowRunContext

    from tasks.curation.cluster import BatchResult, Batches

    @task
    def screen(items: list, batch_no: int = 0) -> BatchResult:
        return BatchResult({f"img-{batch_no}-{i}": {"reason": None, "n": i} for i in items})

    @flow
    def links() -> tuple[int, int]:
        merged: dict = {}
        Batches(None, window=2).run(screen, (list(range(100)) for _ in range(6)), "test", merged.update)
        run_results = FlowRunContext.get().run_results
        return len(merged), len(run_results)

    images, linked = links()
    assert images == 600 and linked <= 2 * 6, linked


def test_the_flows_dask_client_keeps_no_copies_of_old_batches(prefect_api, cluster, tmp_path):
    """distributed's client logs its last 1000 messages by default: every submitted batch's pickled graph (its
    paths and Prefect's flow-run context, about 50 kB) until 1000 newer ones replace it. The curate flow's client
    keeps only CLIENT_LOG_LENGTH messages, so its memory stays flat however many batches a run has."""
    from prefect import flow, task

    from tasks.curation.cluster import CLIENT_LOG_LENGTH, BatchResult, dask_batches

    address, _ = cluster
    n_batches = 3 * CLIENT_LOG_LENGTH

    @task
    def echo(items: list, batch_no: int = 0) -> BatchResult:
        return BatchResult({batch_no: items})

    @flow
    def many_batches() -> tuple[int, int]:
        merged: dict = {}
        with dask_batches(address, {"cache": str(tmp_path)}) as batches:
            batches.run(echo, ([k] for k in range(n_batches)), "test", merged.update)
            log = batches.runner.client.scheduler_comm.recent_message_log
            graphs = sum(1 for payload in log if isinstance(payload, list)
                         for msg in payload if isinstance(msg, dict) and msg.get("op") == "update-graph")
        return len(merged), graphs

    merged, graphs = many_batches()
    assert merged == n_batches
    assert graphs <= CLIENT_LOG_LENGTH, graphs


def test_screen_results_share_their_strings_across_images(tmp_path):
    """The flow holds every image's verdict until the manifest is written. Fresh or read back from the cache,
    two images' results use one copy of each key and short word (not one per image, as a JSON or pickle round
    trip makes), with the values unchanged."""
    import numpy as np
    from PIL import Image

    from tasks.curation.screen import screen_cheap
    from tasks.common.settings import CurateSettings, load
    from tests.conftest import ROOT

    params = load(CurateSettings, ROOT / "params.yaml", workers=1)
    rng = np.random.default_rng(0)
    items = []
    for k in range(2):
        path = tmp_path / f"img{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(path, quality=90)
        items.append((f"id{k}", str(path)))
    fresh = screen_cheap(items, params, str(tmp_path / "cache"))
    cached = screen_cheap(items, params, str(tmp_path / "cache"))  # every result read back from the cache
    assert cached == fresh
    for results in (fresh, cached):
        a, b = results["id0"], results["id1"]
        assert [k for k in a if k not in b] == []
        for key_a, key_b in zip(sorted(a["scores"]), sorted(b["scores"])):
            assert key_a is key_b
        assert a["scores"]["format"] is b["scores"]["format"] == "JPEG"
