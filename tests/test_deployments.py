"""`make serve` for real: deployments/serve.sh starts a Prefect server on a free port, creates the pool,
registers deployments/prefect.yaml and starts a worker; runs of the curate and train deployments go
through that worker and complete. Slow (minutes): `make test-slow`."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
import yaml

from tests.conftest import PARAMS, ROOT, write_curated

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    """serve.sh on a free port with its own PREFECT_HOME (SQLite) and its own request queue; yields the API URL."""
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PREFECT_PORT": str(port), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "GANFLOW_ROOT": str(ROOT), "GANFLOW_SERVER_LOG": str(tmp_path / "server.log"),
           "GANFLOW_QUEUE": str(tmp_path / "queue.sqlite"),  # a scheduled manager pass must not see the repo's queue
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO", "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ROOT / "deployments" / "serve.sh")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while b"Worker '" not in log.read_bytes():  # the worker is up: server, pool and deployments are done
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.time() < deadline, log.read_text()[-4000:]
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/api", log
    finally:
        proc.send_signal(signal.SIGTERM)  # serve.sh stops the worker, then the server
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode is not None


def test_make_serve_registers_deployments_and_its_worker_completes_runs(tmp_path, served):
    from PIL import Image
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from skimage import data as photos

    from models.checkpoint import list_checkpoints

    url, log = served
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(photos, name)()).save(images / f"{name}.png")
    dataset = write_curated(tmp_path / "curated")
    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(batch=4, channel_base=512, channel_max=64, net=dict(z_dim=32, w_dim=32, mapping_layers=2),
                           ada_target=0.0, snapshot_kimg=0.008, cycle_kimg=0.008, device="cpu")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    with temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            deployments = {d.name: d for d in client.read_deployments()}
            assert sorted(deployments) == ["curate", "manager", "pipeline", "train"]
            train = deployments["train"]
            assert train.work_pool_name == "ganflow-process"
            assert train.job_variables["command"] == "prefect flow-run execute"
            assert train.job_variables["env"] == {"PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule"}
            assert train.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
            schema = train.parameter_openapi_schema
            assert schema["required"] == ["data", "run_dir"]  # the rest defaults to params.yaml's train section
            # Every training setting is in the form's nested `settings` (tests/test_flow_forms.py checks each one).
            form = schema["definitions"][schema["properties"]["settings"]["$ref"].split("/")[-1]]["properties"]
            arch = form["arch"]  # optional (params.yaml's train.arch): an enum inside anyOf
            assert [e for a in arch.get("anyOf", [arch]) for e in a.get("enum", [])] == [
                "stylegan2", "stylegan3-t", "stylegan3-r", "pggan"]
            assert "kimg" in form["kimg"]["description"]
            assert train.parameters["settings"] == {"resolution": 64, "arch": "stylegan2", "kimg": 20}
            assert [s.schedule.interval.total_seconds() for s in deployments["manager"].schedules] == [300]

            curate = run_deployment("curate/curate", timeout=0, parameters=dict(
                source="path", input_path=str(images), out=str(tmp_path / "out"), raw_root=str(tmp_path / "raw"),
                cache_dir=str(tmp_path / "cache"), settings={"resolution": 64, "matte": "none"}, version=False))
            trained = run_deployment("train/train", timeout=0, parameters=dict(
                data=str(dataset), run_dir=str(tmp_path / "run"), settings={"resolution": 32, "kimg": 0.008},
                params=str(tmp_path / "params.yaml")))
            deadline = time.time() + 900
            while True:
                states = [client.read_flow_run(r.id).state for r in (curate, trained)]
                if all(s.is_final() for s in states) or time.time() > deadline:
                    break
                time.sleep(2)
    assert [s.name for s in states] == ["Completed", "Completed"], log.read_text()[-4000:]
    assert (tmp_path / "out" / "dataset.json").is_file()
    assert [k for k, _ in list_checkpoints(tmp_path / "run")] == [0.008]
