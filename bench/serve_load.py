"""Load check of `ganflow serve`: images/s served for 64 concurrent requests from a local client, with no errors,
against generating the same images in-process in the same run.

The server is the real one: `ganflow serve --run-dir R` in its own process on 127.0.0.1. The client sends all the
requests at once (GET /api/image.png, one seed each) with httpx over asyncio and checks every answer is a PNG of the
asked size. The reference is what the server does for one request minus HTTP, in this process, one after another
in a worker thread as the server's endpoints run: Explorer.image (load once, synthesize with batch 1) and PNG
encoding. For scale it also times one batched
synthesize call over the same seeds (what batching concurrent requests together could reach). Rounds alternate
server and reference; the best of each is kept (the machine is shared). Without --snapshot the generator is the
`make demo` network (StyleGAN2 64², channel base 4096, max 128) with random weights: the speed is the same.

Usage: python bench/serve_load.py [--requests 64] [--resolution 64] [--rounds 3] [--snapshot CKPT]
                                  [--out bench/results/serve_load.json]
Exits 1 when any request failed.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from models.generate import build_generator, images_from_seeds
from models.run_dir import RunDir
from tasks.serving.app import Explorer, to_png


def demo_snapshot(folder: Path) -> Path:
    """RUN/best.pt of the `make demo` StyleGAN2 network, random weights (as `ganflow evaluate` exports one)."""
    from models.stylegan2 import StyleGAN2Config

    arch = {"name": "stylegan2", "net": StyleGAN2Config(resolution=64, channel_base=4096, channel_max=128).to_dict()}
    torch.manual_seed(0)
    G = build_generator(arch)
    folder.mkdir(parents=True, exist_ok=True)
    best = RunDir(folder).best
    torch.save({"G_ema": G.state_dict(), "arch": arch, "kimg": 0.0}, best)
    return best


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, port: int, queue: int = 8) -> subprocess.Popen:
    # --queue: the whole burst may wait for the generator (its default, 8, would answer the rest 429)
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--run-dir", str(run_dir), "--port", str(port),
           "--queue", str(queue), "--max-wait", "3600"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ganflow serve exited: {proc.stderr.read()}")  # type: ignore[union-attr]  # stderr=PIPE
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=5).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("ganflow serve did not answer within 180 s")


def in_worker_thread(job) -> float:
    """Seconds `job` takes in a thread of its own, as the server's endpoints run (FastAPI runs plain `def` endpoints
    in a thread pool). Not the main thread: there torch's two-thread OpenMP team was seen several times slower at
    batch 1 on a busy machine (0.36-0.49 s against 0.04-0.09 s per image), which would flatter the server."""
    took = []

    def run():
        t = time.perf_counter()
        job()
        took.append(time.perf_counter() - t)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    return took[0]


async def burst(base: str, seeds: list[int], resolution: int) -> tuple[float, list[float], list[str]]:
    """All requests at once; (wall seconds, per-request latencies, errors)."""
    limits = httpx.Limits(max_connections=len(seeds), max_keepalive_connections=len(seeds))
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=600) as client:
        async def one(seed: int) -> tuple[float, str]:
            t = time.perf_counter()
            try:
                r = await client.get("/api/image.png", params={"seed": seed, "resolution": resolution})
            except httpx.HTTPError as e:
                return time.perf_counter() - t, f"seed {seed}: {type(e).__name__}: {e}"
            dt = time.perf_counter() - t
            if r.status_code != 200:
                return dt, f"seed {seed}: HTTP {r.status_code}: {r.text[:200]}"
            size = Image.open(io.BytesIO(r.content)).size
            return dt, "" if size == (resolution, resolution) else f"seed {seed}: image of {size}"

        t = time.perf_counter()
        done = await asyncio.gather(*(one(s) for s in seeds))
        wall = time.perf_counter() - t
    return wall, [d for d, _ in done], [e for _, e in done if e]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64, help="concurrent requests per round (default 64)")
    ap.add_argument("--resolution", type=int, default=64, help="image side asked for (default 64)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--snapshot", help="a RUN/best.pt or checkpoint to serve (default: the demo network, random "
                                       "weights)")
    ap.add_argument("--out", default="bench/results/serve_load.json")
    return ap.parse_args(argv)


def place_snapshot(run: Path, snapshot: str | None) -> None:
    """RUN/best.pt: a copy of `snapshot` (the server refuses a link that leads out of its run folder), or the
    demo network."""
    if snapshot:
        run.mkdir()
        shutil.copyfile(snapshot, RunDir(run).best)
    else:
        demo_snapshot(run)


@dataclass
class Rounds:
    """The best of each way over the rounds (seconds for a round's requests), and what the server answered."""
    arch: dict
    server_s: float = float("inf")        # the burst, served concurrently
    one_by_one_s: float = float("inf")    # the reference: Explorer.image + PNG per request, in this process
    one_batch_s: float = float("inf")     # one batched synthesize call over the same seeds, for scale
    latencies: list[float] = field(default_factory=list)  # of the fastest burst
    errors: list[str] = field(default_factory=list)       # of every burst


def measure(run: Path, base: str, requests: int, resolution: int, rounds: int) -> Rounds:
    """Rounds alternating a burst at the server (at `base`) and the in-process reference, after a warm-up."""
    explorer = Explorer(run_dir=run)
    _name, G, arch = explorer.generator(None)
    asyncio.run(burst(base, list(range(4)), resolution))  # warm-up: connections, first calls
    to_png(explorer.image(None, 0, 1.0, resolution))
    m = Rounds(arch)
    for r in range(rounds):
        seeds = list(range(1000 * (r + 1), 1000 * (r + 1) + requests))  # new seeds: nothing cached
        wall, lat, errs = asyncio.run(burst(base, seeds, resolution))
        m.errors += errs
        if wall < m.server_s:
            m.server_s, m.latencies = wall, lat
        m.one_by_one_s = min(m.one_by_one_s, in_worker_thread(
            lambda seeds=seeds: [to_png(explorer.image(None, s, 1.0, resolution)) for s in seeds]))
        m.one_batch_s = min(m.one_batch_s, in_worker_thread(
            lambda seeds=seeds: [to_png(i) for i in images_from_seeds(G, arch, seeds, resolution=resolution,
                                                                      batch=len(seeds))]))
    return m


def summary(a: argparse.Namespace, m: Rounds) -> dict:
    n = a.requests
    lat = np.sort(np.array(m.latencies))
    return {
        "requests": n, "concurrency": n, "rounds": a.rounds, "resolution": a.resolution,
        "snapshot": a.snapshot or "make-demo StyleGAN2 64² network, random weights",
        "network": {k: m.arch["net"][k] for k in ("resolution", "channel_base", "channel_max", "z_dim")},
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "errors": len(m.errors), "error_samples": m.errors[:5],
        "img_per_s": {"server_concurrent": n / m.server_s, "in_process_one_by_one": n / m.one_by_one_s,
                      "in_process_one_batch": n / m.one_batch_s},
        "ratio_server_to_in_process": m.one_by_one_s / m.server_s,
        "latency_s": {"p50": float(lat[len(lat) // 2]), "p95": float(lat[int(0.95 * (len(lat) - 1))]),
                      "max": float(lat[-1])},
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        place_snapshot(run, a.snapshot)
        port = free_port()
        server = start_server(run, port, queue=a.requests)
        try:
            m = measure(run, f"http://127.0.0.1:{port}", a.requests, a.resolution, a.rounds)
        finally:
            server.terminate()
            server.wait(30)
    result = summary(a, m)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if m.errors:
        print(f"serve_load: {len(m.errors)} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
