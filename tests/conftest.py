"""Shared fixtures: the real Prefect API (ephemeral test server, started once) and the repo's params."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("DO_NOT_TRACK", "1")

# Under pytest-xdist each worker gets its share of the cores for torch and the processes its tests start (OpenMP
# reads OMP_NUM_THREADS): two workers each running 2 threads on 2 cores lose time to oversubscription.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def params_file(tmp_path):
    """Write a params.yaml that is the repo's with some `curate` keys changed; returns its path."""

    def make(**curate) -> Path:
        data = yaml.safe_load(PARAMS.read_text())
        data["curate"].update(curate)
        path = tmp_path / f"params-{len(list(tmp_path.glob('params-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


def write_curated(folder: Path, n: int = 12, side: int = 32, seed: int = 0) -> Path:
    """A small curated dataset as `ganflow curate` writes it: dataset.json + a tar shard of PNGs."""
    import io
    import json
    import tarfile

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "shards").mkdir(parents=True)
    with tarfile.open(folder / "shards" / "shard-000000.tar", "w") as tf:
        for i in range(n):
            # Smooth colour blobs: structure a GAN can learn, unlike white noise.
            yy, xx = np.mgrid[0:side, 0:side] / side
            cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.3)
            blob = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
            img = np.where(blob, rng.integers(0, 256, 3), 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "PNG")
            info = tarfile.TarInfo(f"{i:04d}.png")
            info.size = len(buf.getvalue())
            tf.addfile(info, io.BytesIO(buf.getvalue()))
    import hashlib

    sha = hashlib.sha256((folder / "shards" / "shard-000000.tar").read_bytes()).hexdigest()
    (folder / "dataset.json").write_text(json.dumps(
        {"count": n, "resolution": side, "shards": [{"file": "shards/shard-000000.tar", "count": n, "sha256": sha}]}))
    return folder


# A StyleGAN2 small enough to train in seconds on CPU (tests of what a run folder holds, not of quality).
SMALL_NET = dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32, mapping_layers=2)


def tiny_trained_run(root: Path) -> tuple[Path, Path, list[tuple[float, Path]]]:
    """(data, run, checkpoints): a 32² curated set in root/data and a SMALL_NET StyleGAN2 run in root/run trained
    on it to two checkpoints, with best.pt exported from the first (FID 12.5), as `ganflow train` + `evaluate`
    leave it; the caller writes the fid.csv and metrics.json its test needs."""
    from models.checkpoint import list_checkpoints
    from models.data import load_images
    from models.trainer import TrainConfig, Trainer
    from tasks.evaluation.evaluate import export_best

    data = write_curated(root / "data")
    run = root / "run"
    cfg = TrainConfig(arch="stylegan2", resolution=32, batch=4, snapshot_kimg=0.008, ada_target=0.0, net=SMALL_NET)
    Trainer(cfg, load_images(data, 32), run).train(0.016)
    checkpoints = list_checkpoints(run)
    export_best(checkpoints[0][1], run / "best.pt", {"fid": 12.5})
    return data, run, checkpoints


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    return write_curated(tmp_path / "data")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny networks: thread start-up costs more than it saves there
    (and a busy machine makes it worse)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
