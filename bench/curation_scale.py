"""Curation at scale: img/s and peak memory from 2k to 50k images, on the local pool and on a Dask cluster.

For each size, one generated folder of JPEGs (cached under ~/.cache/ganflow-bench, a pure function of the
image number, so a larger folder extends a smaller one) goes through flows.curate.curate twice, each
run in a fresh process of its own (its own ephemeral Prefect server, raw store and cache, so that no run
keeps memory or database rows from another):

  local      the process pool of this machine (curate.workers = --cores), pool started before timing
  dask       a distributed.LocalCluster of the same cores (--cores single-threaded worker processes),
             with ganflow's Dask settings (deployments/dask/), started before timing,
             through `dask_address` (prefect-dask's DaskTaskRunner)

Per run: the whole flow and its cheap-filter stage (decode, size, blur, grey, phash) in img/s, the flow's
stage times, and peak RSS of the whole process tree (this process, the pool's or the cluster's workers,
the ephemeral Prefect server: psutil, sampled every 0.2 s), of the flow's process alone (on the LocalCluster
it holds the Dask scheduler too), and per role (flow, server, workers). The two runs' manifest.jsonl must be
identical. Then `dvc add` + `dvc push` of the largest local result to a temporary
local remote, timed. Targets (the issue's): flow img/s at the largest size within 20% of the smallest; peak
RSS there <= 1.5x; dask >= 0.8x local; dvc add + push in seconds.

Images are 256x256 so that the content checks (faces, text) and rendering, which dominate per-image cost,
keep a 50k run to hours, not days, on 2 cores; the bench params set resolution 128 and matte none.

    nice -n 19 .venv/bin/python bench/curation_scale.py [--sizes 2000,10000,50000] [--cores 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# Before anything imports prefect (tasks.* and flows.* do).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402

SIDE = 256
GEN_VERSION = "scale-v1"  # bump when the generated images change
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ganflow-bench"
# The LocalCluster runs with the Dask settings ganflow ships for curation clusters (deployments/dask/, README,
# "Curation on a Dask cluster"): glibc's own allocator thresholds, no statistical profiler, short developer logs.
CLUSTER_CONFIG_DIR = ROOT / "deployments" / "dask"
TARGETS = {"flow_rate_largest_vs_smallest_min": 0.8, "peak_rss_largest_vs_smallest_max": 1.5,
           "dask_vs_local_min": 0.8}


# ---------------------------------------------------------------------------------------------------
# Inputs: a pure function of the image number
# ---------------------------------------------------------------------------------------------------

def _kind(i: int) -> str:
    r = np.random.default_rng([11, i]).random()
    if i < 10:
        return "clean"
    for limit, kind in ((0.88, "clean"), (0.93, "blurry"), (0.96, "gray"), (0.98, "exact_dup")):
        if r < limit:
            return kind
    return "near_dup"


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A colour gradient with random filled shapes and pixel noise: sharp, colourful, unique."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32) / SIDE
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (np.cos(rng.uniform(0, np.pi)) * xx + np.sin(rng.uniform(0, np.pi)) * yy)[..., None]
    canvas = np.ascontiguousarray((c0 * (1 - t) + c1 * t).clip(0, 255).astype(np.uint8))
    for _ in range(int(rng.integers(10, 25))):
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        p = tuple(int(v) for v in rng.integers(0, SIDE, 2))
        if rng.random() < 0.5:
            cv2.circle(canvas, p, int(rng.integers(5, 60)), color, -1, cv2.LINE_AA)
        else:
            q = tuple(int(v) for v in np.add(p, rng.integers(10, 90, 2)))
            cv2.rectangle(canvas, p, q, color, -1)
    out = canvas.astype(np.int16) + rng.integers(-10, 11, canvas.shape).astype(np.int16)
    return out.clip(0, 255).astype(np.uint8)


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def image_bytes(i: int) -> bytes:
    kind = _kind(i)
    rng = np.random.default_rng([23, i])
    if kind in ("exact_dup", "near_dup"):
        j = int(rng.integers(0, i))
        while _kind(j) in ("exact_dup", "near_dup"):
            j = int(rng.integers(0, j)) if j else 0
        if kind == "exact_dup":
            return image_bytes(j)
        src = _texture(np.random.default_rng([23, j]))
        return _jpeg(cv2.resize(src, (240, 240), interpolation=cv2.INTER_AREA), 75)
    img = _texture(rng)
    if kind == "blurry":
        img = cv2.GaussianBlur(img, (0, 0), 5)
    elif kind == "gray":
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    return _jpeg(img)


def _write_range(folder: str, start: int, stop: int) -> None:
    for i in range(start, stop):
        path = Path(folder) / f"img{i:07d}.jpg"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(image_bytes(i))
            tmp.rename(path)


def generated(cache: Path, n: int, cores: int) -> Path:
    """CACHE/<version>/all holds images 0..max(n) once; CACHE/<version>/n<N> hard-links the first n."""
    from concurrent.futures import ProcessPoolExecutor

    base = cache / GEN_VERSION
    pool_dir, folder, done = base / "all", base / f"n{n}", base / f"n{n}.complete"  # the marker: not an input
    if done.exists():
        return folder
    pool_dir.mkdir(parents=True, exist_ok=True)
    chunks = [(str(pool_dir), k, min(n, k + 500)) for k in range(0, n, 500)]
    with ProcessPoolExecutor(cores) as ex:
        list(ex.map(_write_range, *zip(*chunks)))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for i in range(n):
        os.link(pool_dir / f"img{i:07d}.jpg", folder / f"img{i:07d}.jpg")
    done.write_text(str(n))
    return folder


# ---------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------

class PeakRSS:
    """Peak resident memory of this process alone and of its whole tree (children, grandchildren), and the
    CPU seconds the tree spent meanwhile: under a shared machine's load, wall time says little about the
    code, CPU time per image does (the per-core rate). `roles` is each kind of process's peak (summed over the
    processes of that kind): the flow, the Prefect server, the workers (pool or cluster)."""

    def __init__(self, every: float = 0.2):
        self.every, self.me = every, psutil.Process()
        self.tree = self.own = 0
        self.roles: dict[str, int] = {}
        self._start: dict[int, float] = {}  # CPU seconds each process had already spent at __enter__
        self._cpu: dict[int, float] = {}    # CPU seconds each process spent since
        self._stop = threading.Event()

    def _procs(self) -> list:
        out, todo = [], [self.me]
        while todo:
            proc = todo.pop()
            out.append(proc)
            try:
                todo.extend(proc.children())
            except psutil.Error:
                pass
        return out

    def _role(self, proc) -> str:
        if proc.pid == self.me.pid:
            return "flow"
        try:
            return "prefect_server" if "uvicorn" in " ".join(proc.cmdline()) else "workers"
        except psutil.Error:
            return "workers"

    @staticmethod
    def _cpu_of(proc) -> float:
        t = proc.cpu_times()
        return t.user + t.system

    def _sample(self) -> None:
        own = total = 0
        roles: dict[str, int] = {}
        for proc in self._procs():
            try:
                rss, cpu = proc.memory_info().rss, self._cpu_of(proc)
            except psutil.Error:
                continue
            own = rss if proc.pid == self.me.pid else own
            total += rss
            role = self._role(proc)
            roles[role] = roles.get(role, 0) + rss
            self._cpu[proc.pid] = max(self._cpu.get(proc.pid, 0.0), cpu - self._start.get(proc.pid, 0.0))
        self.own, self.tree = max(self.own, own), max(self.tree, total)
        for role, rss in roles.items():
            self.roles[role] = max(self.roles.get(role, 0), rss)

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def __enter__(self):
        for proc in self._procs():
            try:
                self._start[proc.pid] = self._cpu_of(proc)
            except psutil.Error:
                pass
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class StageClock:
    """A tasks.common.progress reporter that records when each stage began and ended."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}

    def begin(self, stage: str, total: int) -> None:
        self.spans[stage] = [time.perf_counter(), 0.0, total]

    def advance(self, stage: str, n: int = 1) -> None: ...

    def end(self, stage: str) -> None:
        self.spans[stage][1] = time.perf_counter()


def bench_params(work: Path, cores: int) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["curate"].update(resolution=128, matte="none", workers=cores, dask_address="")
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_flow(folder: Path, n: int, work: Path, params: Path, dask_address: str | None) -> dict:
    from flows.curate import curate
    from tasks.common import progress

    clock = StageClock()
    progress.install(clock)
    try:
        with PeakRSS() as rss:
            t = time.perf_counter()
            result = curate(source="path", input_path=str(folder), out=str(work / "out"),
                            raw_root=str(work / "raw"), cache_dir=str(work / "cache"), params_path=str(params),
                            settings={"dask_address": dask_address})
            seconds = time.perf_counter() - t
    finally:
        progress.install(None)
    stages = {k: round(e - s, 2) for k, (s, e, _) in clock.spans.items()}
    cheap_s = stages.get("cheap", float("nan"))
    return {
        "images": n, "seconds": round(seconds, 2), "img_per_s": round(n / seconds, 2),
        "cheap_images": clock.spans["cheap"][2], "cheap_s": cheap_s,
        "cheap_img_per_s": round(clock.spans["cheap"][2] / cheap_s, 2) if cheap_s else None,
        "stage_s": stages, "other_s": round(seconds - sum(stages.values()), 2),
        "cpu_s": round(rss.cpu_s, 2), "img_per_cpu_s": round(n / rss.cpu_s, 2),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "peak_rss_tree_mb": round(rss.tree / 2**20, 1), "peak_rss_flow_process_mb": round(rss.own / 2**20, 1),
        "peak_rss_by_role_mb": {k: round(v / 2**20, 1) for k, v in sorted(rss.roles.items())},
        "accepted": result["count"], "reasons": result["reasons"], "content_hash": result["content_hash"],
    }


def bench_dvc(out: Path, work: Path) -> dict:
    """`dvc add` + `dvc push` of a curated folder to a temporary local remote, in a fresh git + DVC repo."""
    dvc = str(Path(sys.executable).parent / "dvc")
    repo = out.parent
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}

    def run(*cmd: str) -> float:
        t = time.perf_counter()
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
        return time.perf_counter() - t

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run(dvc, "remote", "add", "-d", "bench", str(work / "dvc-remote"))
    add_s = run(dvc, "add", out.name)
    push_s = run(dvc, "push")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"files": sum(1 for p in out.rglob("*") if p.is_file()), "mb": round(size / 2**20, 1),
            "dvc_add_s": round(add_s, 2), "dvc_push_s": round(push_s, 2), "total_s": round(add_s + push_s, 2)}


def bench_dedup(n: int) -> dict:
    """The dedup stage alone on n random hashes (all unique: the worst case for the kept set)."""
    import random

    from tasks.curation.dedup import Candidate, near_duplicates

    rng = random.Random(3)
    cands = [Candidate(f"{i:08d}", f"{rng.getrandbits(64):016x}", 1, rng.random()) for i in range(n)]
    t = time.process_time()
    near_duplicates(cands, 6)
    return {"images": n, "cpu_s": round(time.process_time() - t, 2)}


def summarize(r: dict) -> dict:
    sizes = sorted(r["runs"], key=int)
    small, large = sizes[0], sizes[-1]
    s: dict = {"smallest": int(small), "largest": int(large)}
    for mode in r["modes"]:
        a, b = r["runs"][small][mode], r["runs"][large][mode]
        s[mode] = {"flow_rate_largest_vs_smallest": round(b["img_per_s"] / a["img_per_s"], 2),
                   "cheap_rate_largest_vs_smallest": round(b["cheap_img_per_s"] / a["cheap_img_per_s"], 2),
                   # img per CPU second: the same ratio without the shared machine's changing load
                   "cpu_rate_largest_vs_smallest": round(b["img_per_cpu_s"] / a["img_per_cpu_s"], 2)
                   if a.get("img_per_cpu_s") and b.get("img_per_cpu_s") else None,
                   "peak_rss_largest_vs_smallest": round(b["peak_rss_tree_mb"] / a["peak_rss_tree_mb"], 2)}
    if {"local", "dask"} <= set(r["modes"]):
        s["dask_vs_local"] = {n: round(r["runs"][n]["dask"]["img_per_s"] / r["runs"][n]["local"]["img_per_s"], 2)
                              for n in sizes}
        s["identical_manifests"] = all(r["runs"][n]["identical_manifest"] for n in sizes)
    ref = r["runs"][large]["dask" if "dask" in r["modes"] else "local"]
    s["projection"] = project(ref, r["cores"])
    return s


def project(run: dict, cores: int, machines=(4, 32), cores_per_machine: int = 16) -> dict:
    """10^6 images on M machines of C cores: the batch stages scale with M x C at the measured per-core rate;
    ingest and the flow's own work (dedup, publish) stay on one machine, at the measured per-image cost.

    Two per-core rates: from CPU seconds (the whole process tree's, all of it charged to the batch stages:
    what a core that is not shared gives) and from wall seconds x cores (what this shared machine gave)."""
    n = run["images"]
    parallel = sum(run["stage_s"].get(k, 0.0) for k in ("cheap", "content", "render"))
    serial = run["seconds"] - parallel
    rates = {"cpu": n / run["cpu_s"], "wall": n / (parallel * cores)} if run.get("cpu_s") else \
        {"wall": n / (parallel * cores)}
    out = {"assumed_cores_per_machine": cores_per_machine, "serial_s_per_1k_images": round(1000 * serial / n, 2)}
    for kind, per_core in rates.items():
        out[f"per_core_img_per_s_{kind}"] = round(per_core, 2)
        for m in machines:
            hours = (1e6 / (per_core * m * cores_per_machine) + 1e6 * serial / n) / 3600
            out[f"{m}_machines_hours_{kind}"] = round(hours, 2)
    return out


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "platform": platform.platform()}


def measure(n: int, mode: str, folder: Path, work: Path, params: Path, cores: int) -> dict:
    """One size on one runner, in this process (a child of main's): its own Prefect server, pool or cluster."""
    from tasks.curation import pool

    out: dict = {}
    t = time.perf_counter()
    _noop_flow()  # the first flow of the process starts the ephemeral Prefect server: not part of the run
    out["prefect_server_start_s"] = round(time.perf_counter() - t, 2)
    if mode == "local":
        list(pool.imap(abs, range(4 * cores), cores))  # the pool is up before timing
        try:
            out.update(run_flow(folder, n, work, params, None))
        finally:
            pool.shutdown()
    else:
        import dask
        import distributed

        t = time.perf_counter()
        with dask.config.set(cluster_config()), distributed.LocalCluster(
                n_workers=cores, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with distributed.Client(cluster) as client:  # workers import ganflow's tasks before timing
                client.run(_warm_imports)
                out["cluster_config"] = client.run(_worker_config)
            out["dask_cluster_start_s"] = round(time.perf_counter() - t, 2)
            out.update(run_flow(folder, n, work, params, cluster.scheduler_address))
    out["manifest_sha256"] = _sha256(work / "out" / "manifest.jsonl")
    return out


def measure_in_child(n: int, mode: str, folder: Path, work: Path, params: Path, cores: int) -> dict:
    """measure() in a fresh process: no run inherits the memory, the server database or the pool of another."""
    work.mkdir()
    result = work / "result.json"
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect-home")}  # a fresh server DB, not the user's
    cmd = [sys.executable, __file__, "--one", str(n), mode, "--folder", str(folder), "--work", str(work),
           "--params", str(params), "--cores", str(cores), "--out", str(result)]
    subprocess.run(cmd, env=env, check=True)
    return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,10000,50000", help="image counts (default 2000,10000,50000)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="cores for the pool and the cluster")
    ap.add_argument("--modes", default="local,dask", help="local, dask or both (default)")
    ap.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"generated images (default {DEFAULT_CACHE})")
    ap.add_argument("--dedup-n", default="100000,1000000", help="hash counts for the dedup stage alone")
    ap.add_argument("--skip-dvc", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "curation_scale.json"))
    # Internal: main runs each measurement as `--one N MODE --folder F --work W --params P` in a child process.
    ap.add_argument("--one", nargs=2, metavar=("N", "MODE"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        result = measure(int(args.one[0]), args.one[1], Path(args.folder), Path(args.work), Path(args.params),
                         args.cores)
        _write(args.out, result)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")

    r: dict = {"sizes": sizes, "cores": args.cores, "modes": modes, "side": SIDE, "machine": machine(),
               "runs": {}, "dedup": [bench_dedup(int(n)) for n in args.dedup_n.split(",") if n]}
    print(f"dedup: {r['dedup']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ganflow-scale-") as tmp:
        tmp = Path(tmp)
        params = bench_params(tmp, args.cores)
        for n in sizes:
            t = time.perf_counter()
            folder = generated(Path(args.cache).expanduser(), n, args.cores)
            print(f"{n} images ready in {time.perf_counter() - t:.1f} s ({folder})", flush=True)
            runs: dict = {}
            for mode in modes:
                runs[mode] = measure_in_child(n, mode, folder, tmp / f"{mode}-{n}", params, args.cores)
                print(f"{n} {mode}: {json.dumps(runs[mode])}", flush=True)
            if len(modes) > 1:
                runs["identical_manifest"] = len({runs[m]["manifest_sha256"] for m in modes}) == 1
            r["runs"][str(n)] = runs
            if n == max(sizes) and not args.skip_dvc:
                try:
                    r["dvc"] = {"images": n, **bench_dvc(tmp / f"{modes[0]}-{n}" / "out", tmp)}
                except (OSError, subprocess.CalledProcessError) as e:
                    r["dvc"] = {"images": n, "error": f"{e}: {getattr(e, 'stderr', b'') or b''!r}"[:500]}
                print(f"dvc: {r['dvc']}", flush=True)
            for mode in modes:
                shutil.rmtree(tmp / f"{mode}-{n}", ignore_errors=True)
            _write(args.out, r)  # what is measured so far survives an interrupted run
    r["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    r["summary"] = summarize(r)
    r["targets"] = TARGETS
    print(json.dumps(r["summary"], indent=2))
    print(f"wrote {_write(args.out, r)}")
    return 0


def _write(path: str, r: dict) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=2) + "\n")
    tmp.replace(out)
    return out


def _noop_flow() -> None:
    from prefect import flow

    @flow(name="bench-noop")
    def noop() -> None:
        return None

    noop()


def _warm_imports() -> None:
    import tasks.curation.render  # noqa: F401
    import tasks.curation.screen  # noqa: F401


def cluster_config() -> dict:
    """deployments/dask/*.yaml as dotted keys, as dask.config.set takes them."""
    import dask

    def flat(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield prefix + key, value

    return dict(flat(dask.config.collect(paths=[str(CLUSTER_CONFIG_DIR)], env={})))


def _worker_config() -> dict:
    """What a worker runs with: the settings of cluster_config() and its allocator's environment."""
    import dask

    return {**{k: dask.config.get(k) for k in cluster_config() if "environ" not in k},
            "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


if __name__ == "__main__":
    raise SystemExit(main())
