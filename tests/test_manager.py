"""The training manager against the real Prefect API (the test harness's server) and real processes.

Runs that a lost machine leaves behind are made through the API as such a machine would leave them
(Running, then silence); train processes are real `ganflow train --flow` processes.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tasks.manager.queue import Queue, open_queue, request_tag
from tests.conftest import PARAMS, ROOT


@pytest.fixture
def api(prefect_api):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        yield client


@pytest.fixture
def manager_params(tmp_path):
    """A params.yaml that is the repo's with some `manager` keys changed; returns its path."""

    def make(**manager) -> Path:
        data = yaml.safe_load(PARAMS.read_text())
        data["manager"].update(queue=str(tmp_path / "queue.sqlite"), **manager)
        path = tmp_path / f"params-{len(list(tmp_path.glob('params-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


def _stub_flow():
    from prefect import flow

    @flow(name="train")
    def train_stub() -> None:  # only its name matters: runs are created through the API, never executed
        pass

    return train_stub


def _running_request(tmp_path: Path, api, state, host: str = "lost-machine", **extra) -> tuple[Queue, str, str]:
    """A request whose attempt 1 runs as a flow run on another machine, in `state` as the API shows it."""
    q = Queue(tmp_path / "queue.sqlite")
    req = q.submit(dict(data=str(tmp_path / "data"), run_dir=str(tmp_path / "run"), arch="stylegan2",
                        resolution=32, kimg=0.048, seed=0, **extra))
    assert q.claim(req.id, "queued", 0, host=host) == 1
    run = api.create_flow_run(_stub_flow(), tags=[request_tag(req.id)], state=state)
    return q, req.id, str(run.id)


def _pass(params: Path, **overrides) -> list[str]:
    from flows.manager import manager_flow
    from tasks.common.settings import ManagerOverrides

    return manager_flow(params=str(params), settings=ManagerOverrides(**overrides))


def _state(api, run_id: str):
    from uuid import UUID

    return api.read_flow_run(UUID(run_id)).state


def test_stale_running_run_is_crashed_in_api_and_capped(tmp_path, api, manager_params):
    from prefect.states import Running

    q, rid, run_id = _running_request(tmp_path, api, Running())
    params = manager_params(max_attempts=1, stale_after_seconds=600)
    assert _pass(params) == [f"{rid}  running   attempt 1: running"]  # silent for seconds only: left alone
    assert q.get(rid).flow_run_id == run_id                         # found by its request tag
    time.sleep(3)
    lines = _pass(params, stale_after_seconds=2)
    req = q.get(rid)
    assert req.state == "failed" and req.attempts == 1
    assert req.reason.startswith("gave up after 1 of 1 attempts; last: no heartbeat or progress for")
    assert lines == [f"{rid}  failed    {req.reason}"]
    state = _state(api, run_id)
    assert state.type.name == "CRASHED" and "no heartbeat" in state.message
    report = _manager_artifact(api)
    assert f"| `{rid}` | attempt 1: flow run running, last sign of life " in report
    assert f"| **failed** | {req.reason} |" in report
    assert _pass(params, stale_after_seconds=2) == []               # nothing left to do


def test_completed_run_marks_request_done(tmp_path, api, manager_params):
    from prefect.states import Completed

    q, rid, _ = _running_request(tmp_path, api, Completed())
    assert _pass(manager_params()) == [f"{rid}  done      after 1 attempt(s)"]
    req = q.get(rid)
    assert (req.state, req.kimg_done, req.reason) == ("done", 0.048, None)


def test_progress_numbers_come_from_the_run_s_progress_event_whatever_its_text_says(tmp_path, api, manager_params):
    """The manager keeps kimg done and kimg/s as numbers the train flow sends (tasks.training.report.emit_progress),
    not what it can read back from the progress artifact's prose: reworded prose changes nothing."""
    from uuid import UUID

    from prefect.client.schemas.actions import ArtifactCreate
    from prefect.states import Running

    from tasks.manager.runs import view_run
    from tasks.training.report import emit_progress

    q, rid, run_id = _running_request(tmp_path, api, Running())
    text = "24 of 48 images · half a kimg each second"
    api.create_artifact(ArtifactCreate(type="progress", data=50.0, description=text, flow_run_id=UUID(run_id)))
    emit_progress(0.024, 0.048, 0.5, flow_run_id=run_id)
    deadline = time.time() + 60  # events are stored asynchronously
    while view_run(api, api.read_flow_run(UUID(run_id))).kimg is None and time.time() < deadline:
        time.sleep(0.2)
    assert _pass(manager_params()) == [f"{rid}  running   attempt 1: running, {text}"]  # the text, shown as it is
    req = q.get(rid)
    assert (req.state, req.kimg_done, req.kimg_target, req.kimg_per_s) == ("running", 0.024, 0.048, 0.5)


def test_crashed_run_restarts_then_attempt_cap_fails_it(tmp_path, api, manager_params):
    from prefect.states import Crashed

    from tasks.manager.launch import process_state

    params = _tiny_train_params(lambda: manager_params(max_attempts=2))  # no stage retries
    q, rid, run_id = _running_request(tmp_path, api, Crashed(message="process killed"), params=str(params))
    [line] = _pass(params)
    req = q.get(rid)
    assert line.startswith(f"{rid}  restarted attempt 2: pid ")
    assert req.state == "running" and req.attempts == 2 and req.history[0].outcome.startswith("attempt 1: flow run crashed")
    log = tmp_path / "run" / "attempt-2.log"
    assert req.current.log == str(log) and req.current.pid
    # The dataset does not exist, so this real train run fails; the manager must not start a 3rd attempt.
    deadline = time.time() + 240
    while process_state(req.current.pid, req.current.host, rid) == "alive" and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    _pass(params)
    req = q.get(rid)
    assert req.state == "failed" and req.attempts == 2, log.read_text()[-2000:]
    assert req.reason.startswith("gave up after 2 of 2 attempts; last: flow run failed: ")
    assert "dataset.json" in req.reason                          # the train flow's own error, for the user
    assert _pass(params) == [] and q.get(rid).attempts == 2


def test_cancelled_run_is_not_restarted(tmp_path, api, manager_params):
    from prefect.states import Cancelled

    q, rid, _ = _running_request(tmp_path, api, Cancelled())
    _pass(manager_params(max_attempts=3))
    req = q.get(rid)
    assert (req.state, req.attempts, req.reason) == ("failed", 1, "cancelled in Prefect")


def _cli_env(api) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1"}


def _machine(folder: Path, **manager) -> Path:
    """A "machine": its own folder holding its own params.yaml (the repo's, with these `manager` keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(PARAMS.read_text())
    data["manager"].update(**manager)
    (folder / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return folder / "params.yaml"


@pytest.mark.parametrize("backend", ["sqlite", "prefect"])
def test_two_managers_at_once_start_each_request_once(tmp_path, api, backend):
    """Two manager processes run the same pass at once, each in its own folder, and meet at every request's claim
    (tests/manager_race.py), so each request is raced for: with the SQLite queue they share its file (one
    machine's disk); with prefect://NAME they share nothing but the Prefect server. Each is started once."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    # Deployment mode: each start is a flow run created through the API, so the API itself counts the starts
    # (with no worker for the pool, the runs stay Scheduled, as they would while a GPU pool is busy).
    api.create_deployment(flow_id=api.create_flow(_stub_flow()), name="race")
    spec = str(tmp_path / "queue.sqlite") if backend == "sqlite" else f"prefect://race-{uuid.uuid4().hex[:8]}"
    machines = [_machine(tmp_path / m, queue=spec, max_running=0, deployment="train/race") for m in ("a", "b")]
    q = open_queue(spec)
    ids = [q.submit(dict(data=str(tmp_path / "data"), run_dir=str(tmp_path / f"run-{i}"), arch="stylegan2",
                         resolution=32, kimg=0.048, seed=i)).id for i in range(4)]
    env = {**_cli_env(api), "GANFLOW_QUEUE": "", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    (gate := tmp_path / "gate").mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.manager_race", str(gate), params.parent.name, "manager",
                               "--once", "--params", str(params)],
                              cwd=params.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for params in machines]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    lines = [line for out, _ in outs for line in out.splitlines()]
    started = sorted(line.split()[0] for line in lines if " started " in line)
    assert started == sorted(ids), lines                      # every request started, none twice
    assert sorted(line.split()[0] for line in lines if "skipped   another manager took it" in line) == sorted(ids)
    for rid in ids:
        req = q.get(rid)
        assert req.attempts == 1 and len(req.history) == 1 and req.flow_run_id, (lines, req)
        runs = api.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[request_tag(rid)])))
        assert [str(r.id) for r in runs] == [req.flow_run_id]
        assert request_tag(rid) in runs[0].tags and runs[0].state.type.name == "SCHEDULED"
        assert "request_id" not in runs[0].parameters  # manager-only: a tag, never a field of the train form
        # The training settings go in the train flow's `settings` form; the rest stay top-level parameters.
        assert runs[0].parameters["settings"] == {"arch": "stylegan2", "resolution": 32, "kimg": 0.048,
                                                  "seed": int(req.params["seed"])}
        assert runs[0].parameters["run_dir"] == req.params["run_dir"] and "kimg" not in runs[0].parameters
    # Waiting for a worker is not a lost run: the next pass leaves them alone.
    again = _pass(machines[0])
    assert sorted(again) == sorted(f"{rid}  running   attempt 1: scheduled" for rid in ids)


def test_a_request_on_the_prefect_queue_outlives_the_disk_of_the_machine_that_queued_and_started_it(
        tmp_path, api, capsys, monkeypatch):
    """Machine A queues two requests and starts the first (max_running 1); then A's disk is lost and the first
    run crashes. Machine B, which shares only the Prefect server with A, restarts the first and, once it is done,
    starts the second: every request and its slot were on the server, none on A."""
    from uuid import UUID

    from prefect.states import Completed, Crashed

    from flows.cli import main
    from tests.conftest import write_curated

    monkeypatch.delenv("GANFLOW_QUEUE", raising=False)
    api.create_deployment(flow_id=api.create_flow(_stub_flow()), name="lost-disk")
    spec = f"prefect://disk-{uuid.uuid4().hex[:8]}"
    a, b = (_machine(tmp_path / m, queue=spec, max_running=1, deployment="train/lost-disk") for m in ("a", "b"))
    data = write_curated(a.parent / "data", n=2)
    rids = []
    for i in range(2):  # the run folders are where every node reaches them (object storage, in production)
        assert main(["train", "submit", "--data", str(data), "--run-dir", str(tmp_path / "runs" / f"r{i}"), "--arch",
                     "stylegan2", "--resolution", "32", "--kimg", "0.048", "--params", str(a)]) == 0
        rids.append(capsys.readouterr().out.strip())
    first, second = rids
    lines = _pass(a)
    assert lines[0].startswith(f"{first}  started   attempt 1: flow run ") and lines[1:] == [
        f"{second}  held      1 request(s) already running"], lines
    run_1 = open_queue(spec).get(first).flow_run_id
    shutil.rmtree(a.parent)                                      # machine A is gone, with its disk
    api.set_flow_run_state(UUID(run_1), Crashed(message="machine preempted"), force=True)

    lines = _pass(b)
    assert lines[0].startswith(f"{first}  restarted attempt 2: flow run ") and lines[1:] == [
        f"{second}  held      1 request(s) already running"], lines
    req = open_queue(spec).get(first)
    assert (req.state, req.attempts) == ("running", 2) and req.history[0].outcome.startswith("attempt 1: flow run crashed")
    assert main(["train", "status", "--params", str(b)]) == 0  # B's `ganflow train status` shows A's requests
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[first][1:2] + rows[first][5:6] == ["running", "2/3"] and rows[second][1] == "queued", rows

    api.set_flow_run_state(UUID(req.flow_run_id), Completed(), force=True)
    lines = _pass(b)
    assert lines[0] == f"{first}  done      after 2 attempt(s)" and lines[1].startswith(
        f"{second}  started   attempt 1: flow run "), lines
    assert [r.state for r in open_queue(spec).list()] == ["done", "running"]


def test_train_submit_and_status_beside_plain_train(tmp_path, manager_params):
    from flows.cli import build_parser
    from flows.cli import route_train_verbs
    from tests.conftest import write_curated

    data = write_curated(tmp_path / "data")
    parser = build_parser()
    d = str(data)  # --data must be an existing folder
    plain = parser.parse_args(route_train_verbs(["train", "--data", d, "--arch", "stylegan2", "--resolution",
                                                 "32", "--kimg", "1", "--snapshot-kimg", "1", "--run-dir", "r"]))
    assert plain.command == "train" and plain.data == d
    sub = parser.parse_args(route_train_verbs(["train", "submit", "--data", d, "--arch", "pggan",
                                               "--resolution", "32", "--kimg", "1", "--run-dir", "r"]))
    assert sub.command == "train submit" and sub.arch == "pggan"
    assert parser.parse_args(route_train_verbs(["train", "status"])).command == "train status"

    params = manager_params()
    env = {**os.environ, "GANFLOW_QUEUE": ""}

    def ganflow(*args):
        return subprocess.run([sys.executable, "-m", "flows.cli", *args, "--params", str(params)],
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)

    out = ganflow("train", "submit", "--data", str(data), "--arch", "stylegan2", "--resolution", "32",
                  "--kimg", "0.048", "--run-dir", str(tmp_path / "run"), "--seed", "3")
    assert out.returncode == 0, out.stderr
    rid = out.stdout.strip()
    req = Queue(tmp_path / "queue.sqlite").get(rid)
    assert req.params == {"data": str(data), "run_dir": str(tmp_path / "run"), "arch": "stylegan2",
                          "resolution": 32, "kimg": 0.048, "seed": 3, "params": str(params)}
    status = ganflow("train", "status")
    assert status.returncode == 0, status.stderr
    header, row = status.stdout.splitlines()
    assert header.split()[:4] == ["id", "state", "kimg", "done/target"]
    assert row.split()[:6] == [rid, "queued", "0", "/", "0.048", "0/3"]
    missing = ganflow("train", "status", "nope")
    assert missing.returncode == 2 and "no training request 'nope'" in missing.stderr


def test_status_reads_each_running_attempt_from_the_api_not_the_last_pass(tmp_path, api, manager_params, capsys):
    """`ganflow train status` asks the API: a restarted request's attempt 2 shows its own flow run and state (not
    attempt 1's reason, nor `-` before a manager pass recorded its run), and once that run Completed the request
    is done, though its process is gone and no manager pass has run since."""
    from prefect.states import Completed, Running

    from flows.cli import main

    q, rid, run1 = _running_request(tmp_path, api, Running())
    q.record_launch(rid, 1, flow_run_id=run1)  # what the manager's pass that restarted it had recorded
    assert q.claim(rid, "running", 1, reason="attempt 1: flow run crashed: killed") == 2  # the manager's restart
    run2 = str(api.create_flow_run(_stub_flow(), tags=[request_tag(rid)], state=Running()).id)
    status = ["train", "status", "--queue", str(tmp_path / "queue.sqlite"), "--params", str(manager_params())]

    def row(*args: str) -> tuple[str, list[str]]:
        assert main([*status, *args]) == 0
        out = capsys.readouterr().out.splitlines()
        return next(line for line in out if line.startswith(rid)), out

    line, _ = row()
    assert line.split()[1] == "running" and line.endswith("attempt 2: flow run running"), line
    _, detail = row(rid)
    assert detail[2].startswith("  attempt 1: started") and f"flow run {run1}; ended " in detail[2]
    assert detail[2].endswith(": attempt 1: flow run crashed: killed"), detail  # attempt 1's reason, on its line
    assert f"flow run {run2}; now running" in detail[3], detail

    from uuid import UUID

    api.set_flow_run_state(UUID(run2), Completed(), force=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    q.record_launch(rid, 2, pid=int(gone.stdout))  # its process has exited, as a finished one does
    line, _ = row()
    assert line.split()[1] == "done" and line.endswith(f"attempt 2 completed (flow run {run2}); the manager's next "
                                                       "pass records it"), line
    assert q.get(rid).state == "running"  # status only reads


def test_a_crashed_deployment_run_that_was_never_queued_is_rescheduled_to_resume(tmp_path, api, manager_params):
    """A SIGTERM that reaches the train flow's engine process (not its `prefect flow-run execute` supervisor) leaves a
    deployment run Crashed, which Prefect never reschedules: the manager does (AwaitingRetry, the run's state message
    naming the checkpoint it resumes from), up to manager.max_attempts executions of the run, then leaves it."""
    from uuid import UUID

    from prefect.states import Crashed, Running

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "ckpt-000000.250.pt").write_bytes(b"")  # the checkpoint the SIGTERM wrote
    deployment = api.create_deployment(flow_id=api.create_flow(_stub_flow()), name="unqueued-test",
                                       entrypoint="flows/train.py:train_flow", tags=["ganflow", "train"])
    run = api.create_flow_run_from_deployment(deployment, parameters={"run_dir": str(run_dir)},
                                              tags=["ganflow", "train"])
    sigterm = "Execution was aborted by a termination signal."
    for state in (Running(), Crashed(message=sigterm)):
        api.set_flow_run_state(run.id, state, force=True)
    params = manager_params(max_attempts=2)
    [line] = _pass(params)
    ckpt = run_dir / "checkpoints" / "ckpt-000000.250.pt"
    assert line == (f"run {run.name}  restarted preempted or lost (attempt 1: flow run crashed: {sigterm}); "
                    f"rescheduled to resume from {ckpt} (0.25 kimg)")
    state = _state(api, str(run.id))
    assert (state.type.name, state.name) == ("SCHEDULED", "AwaitingRetry") and str(ckpt) in state.message
    assert "| **restarted** |" in _manager_artifact(api)

    for state in (Running(), Crashed(message=sigterm)):  # the worker ran it again, and it was preempted again
        api.set_flow_run_state(run.id, state, force=True)
    assert api.read_flow_run(run.id).run_count == 2
    [line] = _pass(params)
    assert line.startswith(f"run {run.name}  failed    gave up after 2 of 2 attempts; last: flow run crashed")
    assert _state(api, str(UUID(str(run.id)))).type.name == "CRASHED"
    assert _pass(params) == []  # given up on: later passes leave it alone


def test_a_deployment_run_left_pending_by_a_stopped_worker_is_rescheduled(tmp_path, api, manager_params):
    """serve.sh stopped mid-run: the run was rescheduled, then picked up (Pending) by the worker that was shutting
    down, which died before starting it. Nobody would ever run it: once it is Pending for stale_after_seconds, the
    manager sets it AwaitingRetry, for the next worker."""
    from prefect.states import Pending, Running

    deployment = api.create_deployment(flow_id=api.create_flow(_stub_flow()), name="pending-test",
                                       entrypoint="flows/train.py:train_flow", tags=["ganflow", "train"])
    run = api.create_flow_run_from_deployment(deployment, parameters={"run_dir": str(tmp_path / "run")},
                                              tags=["ganflow", "train"])
    for state in (Running(), Pending()):
        api.set_flow_run_state(run.id, state, force=True)
    params = manager_params()
    assert _pass(params, stale_after_seconds=600) == []  # just picked up: left to its worker
    time.sleep(3)
    [line] = _pass(params, stale_after_seconds=2)
    assert line.startswith(f"run {run.name}  restarted preempted or lost (attempt 1: pending for ")
    assert "with no worker executing it); rescheduled to resume from its run folder's newest checkpoint" in line
    assert _state(api, str(run.id)).name == "AwaitingRetry"


def test_a_queued_request_whose_run_folder_another_run_holds_waits(tmp_path, api, manager_params):
    """Starting it would be refused at once (one writer per run folder): the manager holds it in the queue instead,
    saying who holds the folder, and starts it on a later pass."""
    from tests.test_run_lease import HOLD

    q = Queue(tmp_path / "queue.sqlite")
    req = q.submit(dict(data=str(tmp_path / "data"), run_dir=str(tmp_path / "run"), arch="stylegan2", resolution=32,
                        kimg=0.048))
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline() == "held\n"
        [line] = _pass(manager_params())
    finally:
        other.kill()
        other.wait()
    assert line.startswith(f"{req.id}  held      its run folder is in use by pid {other.pid} on ")
    assert q.get(req.id).state == "queued"


def _tiny_train_params(make_params) -> Path:
    """The repo's params with a tiny CPU training config (test_trainer's _cfg) in the `train` section."""
    path = make_params()
    data = yaml.safe_load(path.read_text())
    data.setdefault("train", {}).update(TINY_TRAIN)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# test_trainer's tiny CPU config; two StyleGAN2 cycles (stage tasks) of 0.024 kimg, a checkpoint every 2 steps.
TINY_TRAIN = dict(cycle_kimg=0.024, snapshot_kimg=0.008, batch=4, channel_base=512, channel_max=64,
                  net=dict(z_dim=32, w_dim=32, mapping_layers=2), ada_target=0.0, device="cpu",
                  retries=0, retry_delay_seconds=0)


def test_sigkilled_training_is_restarted_by_manager_and_ends_bit_identical(tmp_path, api, manager_params):
    from models.checkpoint import latest_checkpoint, list_checkpoints
    from tasks.manager.launch import process_state
    from tests.conftest import write_curated

    data = write_curated(tmp_path / "data")
    params = _tiny_train_params(manager_params)
    env = _cli_env(api)

    def ganflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args, "--params", str(params)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=600)

    # The reference, trained alongside: the same request, by the train flow, never interrupted.
    ref = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", "--flow", "--data", str(data), "--run-dir",
                            str(tmp_path / "ref"), "--arch", "stylegan2", "--resolution", "32", "--kimg", "0.048",
                            "--seed", "0", "--params", str(params)], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=(tmp_path / "ref.log").open("w"))

    run = tmp_path / "run"
    rid = ganflow("train", "submit", "--data", str(data), "--arch", "stylegan2", "--resolution", "32",
                  "--kimg", "0.048", "--run-dir", str(run)).stdout.strip()
    first = ganflow("manager", "--once")
    assert f"{rid}  started   attempt 1" in first.stdout, first.stderr[-3000:]
    q = Queue(tmp_path / "queue.sqlite")
    attempt = q.get(rid).current
    deadline = time.time() + 300
    while not any(k >= 0.016 for k, _ in list_checkpoints(run)) and time.time() < deadline:
        assert process_state(attempt.pid, attempt.host, rid) == "alive", Path(attempt.log).read_text()[-3000:]
        time.sleep(0.05)
    os.kill(attempt.pid, 9)  # mid-stage: no checkpoint, no final state, the API still says Running
    killed_at = max(k for k, _ in list_checkpoints(run))
    assert killed_at < 0.048, "the run finished before it could be killed; use a longer run"
    while process_state(attempt.pid, attempt.host, rid) == "alive":
        time.sleep(0.05)

    # Before the manager's next pass, `train status` knows the pid is gone: no ETA for a dead process.
    status = ganflow("train", "status")
    assert status.returncode == 0, status.stderr
    [row] = [line for line in status.stdout.splitlines() if line.startswith(rid)]
    assert row.split()[1] == "lost" and f"lost, restart on next manager pass (process {attempt.pid} is gone)" in row
    assert row.split()[7] == "-", row  # the ETA column (after kimg "done / target", attempts, checkpoint)

    second = ganflow("manager", "--once")
    assert f"{rid}  restarted attempt 2" in second.stdout, (second.stdout, second.stderr[-3000:])
    assert "train process exited without reporting a final state" in second.stdout
    old = q.get(rid).history[0]
    assert old.flow_run_id and _state(api, old.flow_run_id).type.name == "CRASHED"
    # The killed stage's task run is Crashed too, not Running forever.
    task_states = [t.state.type.name for t in _task_runs(api, old.flow_run_id)]
    assert task_states and all(s in ("COMPLETED", "CRASHED") for s in task_states) and "CRASHED" in task_states
    [progress] = [a for a in _artifacts(api, old.flow_run_id) if a.type == "progress"]
    assert progress.description.startswith("kimg ") and " · stopped: attempt 1: train process exited" in \
        progress.description, progress.description  # not a progress bar that looks alive
    # The pass's markdown artifact says what it saw and what it did.
    report = _manager_artifact(api)
    assert f"| `{rid}` | attempt 1: flow run running" in report and "process dead | **restarted** | attempt 2:" in report

    # Now the manager as a loop: it watches attempt 2 to the end and marks the request done.
    loop = subprocess.Popen([sys.executable, "-m", "flows.cli", "manager", "--interval", "2", "--params",
                             str(params)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.time() + 400
        while q.get(rid).state == "running" and time.time() < deadline:
            time.sleep(1)
    finally:
        loop.send_signal(2)
        out, err = loop.communicate(timeout=60)
    req = q.get(rid)
    assert (req.state, req.attempts, req.kimg_done) == ("done", 2, 0.048), (out, err[-3000:])
    assert req.history[1].start_kimg == killed_at                   # resumed, not restarted from zero
    assert "resum" in Path(req.history[1].log).read_text().lower()
    assert loop.returncode == 0 and "manager stopped" in err
    assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    ref_state, state = latest_checkpoint(tmp_path / "ref")[1], latest_checkpoint(run)[1]
    assert ref_state["kimg"] == state["kimg"] == 0.048
    assert ref_state["G_ema"].keys() == state["G_ema"].keys()
    assert all(torch_equal(ref_state["G_ema"][k], state["G_ema"][k]) for k in state["G_ema"])


def _task_runs(api, flow_run_id: str):
    from uuid import UUID

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])))


def _artifacts(api, flow_run_id: str):
    from uuid import UUID

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return api.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
        any_=[UUID(flow_run_id)])))


def _manager_artifact(api) -> str:
    """The newest manager pass's markdown artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from tasks.manager.report import ARTIFACT_KEY

    [artifact] = api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[ARTIFACT_KEY])),
                                    sort=ArtifactSort.CREATED_DESC, limit=1)
    return artifact.data


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


@pytest.mark.slow  # about a minute: two train processes, three manager passes and 25 s of silence
def test_frozen_training_goes_stale_and_is_killed_before_its_restart(tmp_path, api, manager_params):
    """A SIGSTOPped train process is a machine that stopped answering: no heartbeat, no progress, yet
    Running in the API and still present here. The manager must restart it, and kill the old one first."""
    from models.checkpoint import list_checkpoints
    from tasks.manager.launch import kill_local, process_state
    from tests.conftest import write_curated

    data = write_curated(tmp_path / "data")
    params = _tiny_train_params(manager_params)
    data_params = yaml.safe_load(params.read_text())
    data_params["train"]["cycle_kimg"] = 10.0  # long enough to still be training when frozen
    params.write_text(yaml.safe_dump(data_params, sort_keys=False))
    env = _cli_env(api)

    def manager(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "flows.cli", "manager", "--once", "--params", str(params),
                              *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    q = Queue(tmp_path / "queue.sqlite")
    rid = q.submit(dict(data=str(data), run_dir=str(tmp_path / "run"), arch="stylegan2", resolution=32,
                        kimg=20.0, seed=0, params=str(params))).id
    assert f"{rid}  started" in manager()
    first = q.get(rid).current
    try:
        deadline = time.time() + 300
        while not list_checkpoints(tmp_path / "run") and time.time() < deadline:
            assert process_state(first.pid, first.host, rid) == "alive", Path(first.log).read_text()[-3000:]
            time.sleep(0.2)
        # Healthy training reports progress every few seconds: not stale at a 20 s threshold.
        assert f"{rid}  running   attempt 1: running, kimg " in manager("--stale-after", "20")
        os.kill(first.pid, 19)  # SIGSTOP
        time.sleep(25)
        out = manager("--stale-after", "20")
        assert f"{rid}  restarted attempt 2" in out and "no heartbeat or progress for" in out, out
        assert process_state(first.pid, first.host, rid) == "dead"    # killed, not left to wake up later
        old = q.get(rid).history[0]
        assert _state(api, old.flow_run_id).type.name == "CRASHED"
        assert q.get(rid).current.pid != first.pid
    finally:
        req = q.get(rid)
        for a in req.history:
            kill_local(a.pid, a.host, rid)


def test_pass_report_is_one_table_row_per_request_whatever_the_detail_holds():
    from tasks.manager.actions import Outcome
    from tasks.manager.report import pass_markdown, pass_summary
    from tasks.common.settings import ManagerSettings

    settings = ManagerSettings(queue="q", interval_seconds=120, stale_after_seconds=600, max_attempts=3,
                               max_running=0, deployment="train/train")
    outcomes = [Outcome("a1", "failed", "flow run failed: x | y\nz", "attempt 3: flow run failed"),
                Outcome("b2", "started", "attempt 1: flow run 42", "queued")]
    text = pass_markdown(outcomes, "runs/queue.sqlite", settings)
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows == ["| `a1` | attempt 3: flow run failed | **failed** | flow run failed: x \\| y z |",
                    "| `b2` | queued | **started** | attempt 1: flow run 42 |"]
    assert "no limit on runs" in text and "deployment `train/train`" in text
    assert pass_summary(outcomes) == "1 failed, 1 started" and pass_summary([]) == "nothing to do"
    assert "nothing to do" in pass_markdown([], "q", settings)
