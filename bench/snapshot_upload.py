"""Snapshot upload to object storage: what publishing a run's snapshot to s3:// costs, against the local write of
the same snapshot and the training time between snapshots, in one run.

One Trainer.train() run that snapshots every few steps into a local folder (as a run URL's cache is), with each
snapshot timed (the local write: checkpoint + sample grid, fsynced, renamed) and then published by
tasks.storage.mirror.RunMirror to an S3 API (upload of the new files, then the manifest), timed too:
- upload_vs_local_write: median upload / median local write;
- fraction_at_default: one upload / (local write + upload + snapshot_kimg x training s/kimg), with snapshot_kimg
  from params.yaml: what a run publishing to the store pays at the default interval (the upload runs in the
  training thread, so it adds to the run's time).

The store is moto's S3 server on localhost (started here, `python -m moto.server`) unless AWS_ENDPOINT_URL names
one (MinIO, or AWS itself with its credentials in the environment): on localhost the upload measures ganflow's and
s3fs's own cost (hashing, requests, copying), not a network's bandwidth; with a real endpoint it measures both.

Usage: python bench/snapshot_upload.py [--configs demo auto64] [--device cpu|cuda] [--bucket B]
                                       [--out bench/results/snapshot_upload.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import yaml

from models.run_dir import RunDir

from checkpoint_overhead import CONFIGS, _sync, warm_trainer  # bench/checkpoint_overhead.py, beside this script


def local_s3() -> subprocess.Popen:
    """moto's S3 server on a free localhost port, AWS_* pointed at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto's S3 server did not start")


def measure(name: str, steps_per_snapshot: int, snapshots: int, default_kimg: float, device: str, bucket: str,
            tmp: Path) -> dict:
    from tasks.storage.mirror import RunMirror

    spec = CONFIGS[name]
    res, batch = spec["resolution"], spec["batch"]
    local = tmp / name
    trainer, interval_kimg = warm_trainer(name, steps_per_snapshot, device, local)  # warm-up: not published
    for p in local.rglob("*"):
        if p.is_file():
            p.unlink()
    mirror = RunMirror(f"s3://{bucket}/bench/{name}-{uuid.uuid4().hex[:8]}", local)

    writes: list[float] = []
    uploads: list[float] = []
    uploaded_mb: list[float] = []
    write = trainer.snapshot

    def timed_snapshot() -> Path:
        _sync(device)
        t = time.perf_counter()
        path = write()
        _sync(device)
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        sent = mirror.publish()
        uploads.append(time.perf_counter() - t)
        uploaded_mb.append(sum((local / rel).stat().st_size for rel in sent) / 2**20)
        return path

    trainer.snapshot = timed_snapshot  # type: ignore[method-assign]  # timed, on this instance only
    _sync(device)
    t0 = time.perf_counter()
    trainer.train(snapshots * interval_kimg)
    _sync(device)
    total = time.perf_counter() - t0
    train_s_per_kimg = (total - sum(writes) - sum(uploads)) / (snapshots * interval_kimg)
    w, u = statistics.median(writes), statistics.median(uploads)
    ckpt = RunDir(local).checkpoint_files()[-1][1]
    mb = statistics.median(uploaded_mb)
    return {"config": name, "resolution": res, "batch": batch, "device": device,
            "checkpoint_mb": round(ckpt.stat().st_size / 2**20, 1), "uploaded_mb_per_snapshot": round(mb, 1),
            "snapshots": len(writes), "local_write_seconds": [round(t, 3) for t in writes],
            "upload_seconds": [round(t, 3) for t in uploads], "local_write_seconds_median": round(w, 3),
            "upload_seconds_median": round(u, 3), "upload_mb_per_s": round(mb / u, 1) if u else None,
            "upload_vs_local_write": round(u / w, 2), "train_s_per_kimg": round(train_s_per_kimg, 2),
            "interval_kimg": interval_kimg, "run_seconds": round(total, 2),
            "default_snapshot_kimg": default_kimg,
            "training_seconds_between_default_snapshots": round(default_kimg * train_s_per_kimg, 1),
            "fraction_at_default": round(u / (w + u + default_kimg * train_s_per_kimg), 6)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["demo", "auto64"], choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps-per-snapshot", type=int, default=1)
    ap.add_argument("--snapshots", type=int, default=3)
    ap.add_argument("--bucket", default="ganflow-bench")
    ap.add_argument("--params", default="params.yaml", help="train.snapshot_kimg is the default interval")
    ap.add_argument("--out", default="bench/results/snapshot_upload.json")
    args = ap.parse_args()

    default_kimg = float(yaml.safe_load(Path(args.params).read_text())["train"]["snapshot_kimg"])
    server = None if os.environ.get("AWS_ENDPOINT_URL") else local_s3()
    store = "moto (localhost)" if server else os.environ["AWS_ENDPOINT_URL"].split("//")[-1].split("/")[0]
    try:
        import boto3

        try:
            boto3.client("s3").create_bucket(Bucket=args.bucket)
        except Exception as e:  # it exists (a real store): use it
            if "BucketAlready" not in type(e).__name__ + str(e):
                raise
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.configs:
                row = measure(name, args.steps_per_snapshot, args.snapshots, default_kimg, args.device, args.bucket,
                              Path(tmp))
                rows.append(row)
                print(f"{name:8s} {row['resolution']:4d}² {row['checkpoint_mb']:7.1f} MB/checkpoint: local write "
                      f"{row['local_write_seconds_median']:.2f} s, upload {row['upload_seconds_median']:.2f} s "
                      f"({row['upload_vs_local_write']:.1f}x; {row['upload_mb_per_s']} MB/s), training "
                      f"{row['train_s_per_kimg']:.1f} s/kimg: upload {100 * row['fraction_at_default']:.3f}% of a "
                      f"run snapshotting every {default_kimg:g} kimg")
    finally:
        if server is not None:
            server.kill()
            server.wait()
    result = {"store": store, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "default_snapshot_kimg": default_kimg, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
