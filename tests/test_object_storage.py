"""Run folders in object storage (tasks/storage/): against moto's S3 server on localhost, a real HTTP S3 API that
s3fs reaches through AWS_ENDPOINT_URL exactly as it would reach MinIO or AWS. Two "machines" are two cache
folders (XDG_CACHE_HOME) and two dataset folders sharing nothing but the endpoint."""
from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid

import pytest
import torch

from models.checkpoint import load_checkpoint
from models.trainer import TrainConfig
from tests.conftest import write_curated

CFG = TrainConfig(arch="stylegan2", resolution=16, batch=4, snapshot_kimg=0.004, seed=0,
                  net=dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2))
BUCKET = "ganflow-runs"


class S3Server:
    """moto's S3 server on a fixed local port, stoppable and restartable (its buckets live in this process)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server: ThreadedMotoServer = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def s3():
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    with pytest.MonkeyPatch.context() as mp:
        server = S3Server()
        for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.port}", "AWS_ACCESS_KEY_ID": "testing",
                            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                            "AWS_MAX_ATTEMPTS": "2"}.items():  # botocore's own retries short: ganflow's say so
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield server
        server.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = write_curated(tmp_path_factory.mktemp("a") / "data", n=8, side=16)
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "content_hash": "c" * 64}))
    return folder


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory, one_torch_thread):
    """G_ema of a local run trained to 0.012 kimg in one go: what every resumed run must equal bit for bit."""
    from models.run_dir import RunDir
    from tasks.training.run import run_training

    run = tmp_path_factory.mktemp("local") / "run"
    run_training(CFG, data, run, 0.012)
    return load_checkpoint(RunDir(run).newest_checkpoint()[1])["G_ema"]


def machine(tmp_path, monkeypatch, name: str, data=None):
    """Switch this process to 'machine' name: its own, empty cache folder, and its own copy of the dataset."""
    from tasks.storage import mirror

    monkeypatch.setattr(mirror, "_MIRRORS", {})  # nothing opened on another machine
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / name / "cache"))
    if data is not None:
        return shutil.copytree(data, tmp_path / name / "datasets" / "photos")
    return None


def url() -> str:
    return f"s3://{BUCKET}/runs/{uuid.uuid4().hex[:8]}"


def manifest(run_url: str) -> dict:
    import boto3

    key = run_url.split(BUCKET + "/", 1)[1] + "/published.json"
    return json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read())


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_published_to_s3_resumes_on_another_machine_bit_identical(s3, data, uninterrupted, tmp_path,
                                                                         monkeypatch, one_torch_thread):
    from models.run_dir import RunDir
    from tasks.training.run import run_training

    run = url()
    machine(tmp_path, monkeypatch, "a")
    run_training(CFG, data, run, 0.008)
    published = manifest(run)
    assert published["checkpoint"] == "checkpoints/ckpt-000000.008.pt"
    assert {"checkpoints/ckpt-000000.004.pt", "samples/fakes-000000.008.png"} <= published["files"].keys()

    # Machine B: an empty cache, the same dataset in another folder (the run knows its data by content hash).
    data_b = machine(tmp_path, monkeypatch, "b", data)
    result = run_training(CFG, data_b, run, 0.012)
    assert result.resumed_from.endswith("checkpoints/ckpt-000000.008.pt")
    cache_b = tmp_path / "b" / "cache" / "ganflow" / "runs" / "s3" / BUCKET / "runs" / run.rsplit("/", 1)[1]
    assert not (cache_b / "checkpoints" / "ckpt-000000.004.pt").exists()  # a resume pulls the newest only
    assert same(load_checkpoint(RunDir(cache_b).newest_checkpoint()[1])["G_ema"], uninterrupted)
    assert manifest(run)["checkpoint"] == "checkpoints/ckpt-000000.012.pt"
    assert "checkpoints/ckpt-000000.004.pt" in manifest(run)["files"]  # A's older snapshots stay the run's

    # Other data under the same run URL is still refused, by its hash.
    data_c = machine(tmp_path, monkeypatch, "c", data)
    meta = json.loads((data_c / "dataset.json").read_text())
    (data_c / "dataset.json").write_text(json.dumps({**meta, "content_hash": "d" * 64}))
    with pytest.raises(ValueError, match=r"another run \(dataset differ"):
        run_training(CFG, data_c, run, 0.016)


def test_a_torn_upload_is_never_what_a_resume_reads(s3, data, uninterrupted, tmp_path, monkeypatch,
                                                    one_torch_thread):
    import boto3

    from models.run_dir import RunDir
    from tasks.training.run import run_training

    run = url()
    machine(tmp_path, monkeypatch, "a")
    run_training(CFG, data, run, 0.008)
    prefix = run.split(BUCKET + "/", 1)[1]
    client = boto3.client("s3")
    whole = client.get_object(Bucket=BUCKET, Key=f"{prefix}/checkpoints/ckpt-000000.008.pt")["Body"].read()
    # A killed writer's next snapshot, cut off: an object that no manifest names ...
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/checkpoints/ckpt-000000.012.pt", Body=whole[: len(whole) // 2])
    # ... and the newest published one torn too (a store that shows a partial write): it fails its sha256.
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/checkpoints/ckpt-000000.008.pt", Body=whole[:-100])

    data_b = machine(tmp_path, monkeypatch, "b", data)
    result = run_training(CFG, data_b, run, 0.012)
    assert result.resumed_from.endswith("checkpoints/ckpt-000000.004.pt")  # the newest whole one
    cache_b = RunDir(tmp_path / "b" / "cache" / "ganflow" / "runs" / "s3" / BUCKET / prefix)
    assert same(load_checkpoint(cache_b.newest_checkpoint()[1])["G_ema"], uninterrupted)


def test_credentials_in_a_run_url_are_refused_without_echoing_them(s3, data, tmp_path, capsys):
    from flows.cli import main
    from tasks.storage.mirror import open_run, open_snapshot
    from tasks.storage.url import CredentialsInUrl

    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    for argv in (["train", "--data", str(data), "--run-dir", f"s3://AKIAEXAMPLE:{secret}@{BUCKET}/runs/x",
                  "--arch", "stylegan2", "--resolution", "16", "--kimg", "0.004"],
                 ["generate", "--snapshot", f"s3://AKIAEXAMPLE:{secret}@{BUCKET}/runs/x/best.pt", "--seeds", "1",
                  "--out", str(tmp_path / "out")],
                 ["evaluate", "--run-dir", f"s3://AKIAEXAMPLE@{BUCKET}/runs/x", "--data", str(data)]):
        with pytest.raises(SystemExit) as code:  # argparse's refusal, before anything runs
            main(argv)
        assert code.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "must not carry credentials" in err and f"s3://…@{BUCKET}/…" in err
        assert secret not in err and "AKIAEXAMPLE" not in err
    for call in (open_run, open_snapshot):  # what the flows (their run_dir parameter) go through
        with pytest.raises(CredentialsInUrl) as e:
            call(f"gs://user:{secret}@bucket/run")
        assert secret not in str(e.value)


def test_s3_down_mid_run_delays_the_upload_never_the_checkpoint(s3, data, tmp_path, monkeypatch, capfd,
                                                                one_torch_thread):
    from models.run_dir import RunDir
    from tasks.training.run import run_training

    run = url()
    machine(tmp_path, monkeypatch, "a")
    cache = RunDir(tmp_path / "a" / "cache" / "ganflow" / "runs" / "s3" / BUCKET / run.split(BUCKET + "/")[1])
    seen: list[float] = []

    def progress(stats: dict) -> None:  # after the first snapshot is published, the store goes away for 3 s
        if "checkpoint" in stats and not seen:
            s3.stop()
            threading.Timer(3.0, s3.start).start()
        if "checkpoint" in stats:
            seen.append(stats["kimg"])

    t0 = time.monotonic()
    run_training(CFG, data, run, 0.012, progress_fn=progress)
    assert seen == [0.004, 0.008, 0.012] and time.monotonic() - t0 >= 3.0
    # Training kept its checkpoints while it waited, and said what it waited for.
    assert [k for k, _ in cache.checkpoint_files()] == [0.004, 0.008, 0.012]
    err = capfd.readouterr().err
    assert f"waiting for the object store: publishing {cache.path} to {run} failed" in err
    assert manifest(run)["checkpoint"] == "checkpoints/ckpt-000000.012.pt"  # all published once it was back
    assert {"checkpoints/ckpt-000000.008.pt"} <= manifest(run)["files"].keys()


def test_the_lease_of_a_run_url_is_at_the_url(s3, tmp_path, monkeypatch):
    """Two machines never train into one run URL at once: the lease is an object there, created with a conditional
    PUT (If-None-Match: *), which moto honours as S3 does."""
    import boto3

    from tasks.training.lease import RunDirBusy, acquire, run_dir_lease

    run = url()
    machine(tmp_path, monkeypatch, "a")
    with run_dir_lease(run) as held:
        prefix = run.split(BUCKET + "/", 1)[1]
        keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]]
        assert keys == [f"{prefix}/lease/00000001.json"]
        assert not held.files.create(held.gen, held.record)  # the conditional PUT refuses an existing generation
        record = json.loads(boto3.client("s3").get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
        # Machine B sees a live holder on another host (the same host here: pretend it is elsewhere).
        record["host"] = "gpu-node-7"
        boto3.client("s3").put_object(Bucket=BUCKET, Key=keys[0], Body=json.dumps(record).encode())
        machine(tmp_path, monkeypatch, "b")
        with pytest.raises(RunDirBusy, match=rf"^{run} is in use by another run: pid \d+ on gpu-node-7"):
            acquire(run)
