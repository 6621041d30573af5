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
from tests.test_train_flow import api  # noqa: F401  (the Prefect client fixture)

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

    # A machine without the dataset checks what DVC would fetch against the hash the run URL's newest checkpoint
    # records (tasks/training/plan.py), read from the URL, not from a local folder.
    from tasks.training.plan import recorded_dataset_hash

    machine(tmp_path, monkeypatch, "e")
    assert recorded_dataset_hash(run) == json.loads((data / "dataset.json").read_text())["content_hash"]

    # A third machine draws images straight from a published snapshot's URL.
    from flows.cli import main

    machine(tmp_path, monkeypatch, "d")
    assert main(["generate", "--snapshot", f"{run}/checkpoints/ckpt-000000.012.pt", "--seeds", "1,2",
                 "--out", str(tmp_path / "d" / "out")]) == 0
    assert (tmp_path / "d" / "out" / "grid.png").is_file()

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


def clone(root, name: str, data):
    """A 'machine': its own copy of the code, params.yaml and the dataset, at its own path (nothing shared but
    the S3 endpoint and the Prefect server)."""
    from tests.conftest import ROOT
    from tests.test_train_flow import tiny_params

    folder = root / name
    for package in ("models", "tasks", "flows"):
        shutil.copytree(ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(tiny_params(root, snapshot_kimg=0.008, cycle_kimg=1.0), folder / "params.yaml")
    # TODO(issue 27, point 2): B gets the dataset from the DVC remote (the dvcremote branch's pull-before-training
    # step in tasks/versioning/); until that lands the test copies it in.
    shutil.copytree(data, folder / "data" / "curated" / "photos")
    return folder


def test_a_preempted_flow_run_on_machine_a_is_finished_by_machine_b(s3, data, tmp_path, api, one_torch_thread):
    """Issue 27's two machines: a deployment's train run executes on A (`prefect flow-run execute`, as a worker
    runs it) with its run folder in S3; SIGTERM after its first published snapshot reschedules it; B, another
    folder with another cache, executes the rescheduled run, resumes from what A published, and finishes with
    G_ema bit-identical to an uninterrupted run."""
    import signal
    import subprocess
    import sys

    from flows.train import train_flow
    from models.run_dir import RunDir, checkpoint_kimg
    from tasks.training.plan import plan_training
    from tasks.training.run import run_training
    from tests.test_train_flow import _env, _logs

    a, b = clone(tmp_path, "a", data), clone(tmp_path, "b", data)
    run = url()
    deployment = api.create_deployment(flow_id=api.create_flow(train_flow), name="two-machines",
                                       entrypoint="flows/train.py:train_flow")
    flow_run = api.create_flow_run_from_deployment(deployment, parameters=dict(
        data="data/curated/photos", run_dir=run, settings={"arch": "stylegan2", "resolution": 16, "kimg": 1.0},
        params="params.yaml"))
    execute = [sys.executable, "-m", "prefect", "flow-run", "execute", str(flow_run.id)]

    def on(machine):
        return _env(PYTHONPATH=str(machine), XDG_CACHE_HOME=str(machine / "cache"),
                    PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR="reschedule")

    proc = subprocess.Popen(execute, cwd=a, env=on(a), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while True:  # until A has published its first snapshot
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        try:
            if manifest(run)["checkpoint"]:
                break
        except Exception:
            time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert "Flow run successfully rescheduled" in out + err, err[-3000:]
    stopped = manifest(run)["checkpoint"]  # A's SIGTERM checkpoint, published on its way out
    at = checkpoint_kimg(stopped.rsplit("/", 1)[1])
    assert at and at < 1.0

    # B: a shorter target keeps the test short (the run's own parameters otherwise).
    api.update_flow_run(flow_run.id, parameters={**flow_run.parameters, "settings": {
        "arch": "stylegan2", "resolution": 16, "kimg": round(at + 0.008, 3)}})
    again = subprocess.run(execute, cwd=b, env=on(b), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert api.read_flow_run(flow_run.id).state.is_completed()
    assert not (b / "cache" / "ganflow" / "runs" / "s3" / BUCKET / run.split(BUCKET + "/")[1] / "checkpoints"
                / "ckpt-000000.008.pt").exists() or at == 0.008  # B pulled A's newest only
    cache_b = RunDir(b / "cache" / "ganflow" / "runs" / "s3" / BUCKET / run.split(BUCKET + "/")[1])
    # B resumed from what A published (training afresh would reach the same G_ema too: this says it did not).
    assert any(m.endswith(f"resumed from {cache_b.checkpoint(at)}") for _, m in _logs(api, flow_run.id))
    final = manifest(run)["checkpoint"]
    assert checkpoint_kimg(final.rsplit("/", 1)[1]) == pytest.approx(at + 0.008)

    # The same settings trained in one go, here.
    plan = plan_training(str(a / "params.yaml"), {"arch": "stylegan2", "resolution": 16, "kimg": at + 0.008})
    reference = tmp_path / "reference"
    run_training(plan.config, data, reference, at + 0.008)
    assert same(load_checkpoint(cache_b.newest_checkpoint()[1])["G_ema"],
                load_checkpoint(RunDir(reference).newest_checkpoint()[1])["G_ema"])


def test_the_manager_reads_a_url_run_by_its_published_manifest(s3, tmp_path, monkeypatch):
    """The manager (another machine) sees an s3:// run's newest checkpoint as its manifest names it, and keeps the
    attempt logs in the run's local cache, never in a relative folder "s3:/..." with no checkpoints."""
    import boto3

    from tasks.manager.launch import launch_local
    from tasks.storage.mirror import FORMAT
    from tasks.manager.run_view import local_run, newest_checkpoint

    run = url()
    machine(tmp_path, monkeypatch, "manager")
    monkeypatch.chdir(tmp_path)
    assert newest_checkpoint(run) is None  # nothing published yet
    key = run.split(BUCKET + "/", 1)[1] + "/published.json"
    boto3.client("s3").put_object(Bucket=BUCKET, Key=key, Body=json.dumps(
        {"format": FORMAT, "checkpoint": "checkpoints/ckpt-000000.008.pt", "files": {}}).encode())
    assert newest_checkpoint(run) == (0.008, f"{run}/checkpoints/ckpt-000000.008.pt")
    log = local_run(run).attempt_log(1)
    assert log.is_absolute() and str(tmp_path / "manager" / "cache") in str(log)
    monkeypatch.setattr("tasks.manager.launch.train_command", lambda params, rid: ["true"])
    _, written = launch_local({"run_dir": run}, "r1", 1)
    assert written == log and log.exists() and not (tmp_path / "s3:").exists()
