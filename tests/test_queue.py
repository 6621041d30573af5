"""The training request queue and the manager's decisions. The queue's contract is tested on both backends: the
SQLite file, and the requests kept on the Prefect server (prefect://NAME, against the test harness's real server)."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3
import uuid

import pytest

from tasks.manager.queue import Queue, QueueError, open_queue, queue_path
from tasks.manager.supervise import Observation, decide
from tasks.common.settings import ManagerSettings, load
from tests.conftest import PARAMS
from tests.queue_race import race

REQ = dict(data="/d", run_dir="/r", arch="stylegan2", resolution=32, kimg=0.048, seed=0)


@pytest.fixture(params=["sqlite", "prefect"])
def spec(request, tmp_path) -> str:
    """A fresh queue of each backend: a SQLite file, or a new name on the Prefect test server."""
    if request.param == "sqlite":
        return str(tmp_path / "q.sqlite")
    request.getfixturevalue("prefect_api")
    return f"prefect://t{uuid.uuid4().hex[:8]}"


def test_submit_get_list_and_prefix(spec):
    q = open_queue(spec)
    a = q.submit(REQ)
    with pytest.raises(QueueError, match=f"request {a.id} already trains into /r"):
        q.submit({**REQ, "seed": 1})
    b = q.submit({**REQ, "seed": 1, "run_dir": "/r2"})
    assert a.state == "queued" and a.attempts == 0 and a.kimg_target == 0.048 and a.params == REQ
    assert [r.id for r in q.list()] == [a.id, b.id]
    assert q.get(a.id[:6]).id == a.id
    with pytest.raises(QueueError, match="no training request"):
        q.get("zzzz")
    with pytest.raises(QueueError, match="needs data, run_dir"):
        q.submit({"arch": "stylegan2", "resolution": 32})


def test_transitions_are_compare_and_set(spec):
    q = open_queue(spec)
    r = q.submit(REQ)
    assert q.claim(r.id, "queued", 0) == 1
    assert q.claim(r.id, "queued", 0) is None            # already claimed: a second start is refused
    assert q.record_launch(r.id, 1, pid=123, log="/r/attempt-1.log")
    assert q.claim(r.id, "running", 1, reason="crashed", start_kimg=0.016) == 2   # a restart
    assert not q.record_launch(r.id, 1, flow_run_id="old")  # a stale attempt can no longer write
    assert not q.finish(r.id, 1, "done")
    assert q.finish(r.id, 2, "done")
    got = q.get(r.id)
    assert (got.state, got.attempts, got.reason) == ("done", 2, None)
    assert [(a.n, a.outcome, a.start_kimg) for a in got.history] == [(1, "crashed", 0.0), (2, "done", 0.016)]
    assert not q.claim(r.id, "running", 2) and q.get(r.id).state == "done"  # a restart after the end is refused
    with pytest.raises(QueueError, match="cannot start a request that is done"):
        q.claim(r.id, "done", 2)
    with pytest.raises(QueueError, match="2 of 2 attempts"):
        q.claim(q.submit(REQ).id, "running", 2, max_attempts=2)


def test_max_running_holds_queued_requests_back(spec):
    q = open_queue(spec)
    a, b = q.submit(REQ), q.submit({**REQ, "run_dir": "/r2"})
    assert q.claim(a.id, "queued", 0, max_running=1) == 1
    assert q.claim(b.id, "queued", 0, max_running=1) is None     # waits for a free slot
    assert q.claim(a.id, "running", 1, max_running=1) == 2       # a restart takes no new slot
    assert q.finish(a.id, 2, "failed", "gave up")
    assert q.claim(b.id, "queued", 0, max_running=1) == 1


def test_processes_racing_never_claim_one_request_twice(spec, tmp_path, monkeypatch):
    """Four managers (processes) claim the same requests at the same moment, two in each order: each request is
    won once; then, on another queue with max_running 3, no more than 3 are won between them."""
    from prefect.settings import PREFECT_API_URL

    if spec.startswith("prefect://"):  # the processes reach the test server as another machine would
        monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    limited = spec + "-slots" if spec.startswith("prefect://") else str(tmp_path / "slots.sqlite")
    q, q3 = open_queue(spec), open_queue(limited)
    ids = [q.submit({**REQ, "seed": i, "run_dir": f"/r{i}"}).id for i in range(12)]
    ids3 = [q3.submit({**REQ, "seed": i, "run_dir": f"/r{i}"}).id for i in range(6)]
    ctx = mp.get_context("spawn")  # fork would copy the Prefect harness's threads mid-flight
    start, wins = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=race, args=([(spec, ids[::(-1) ** k], 0), (limited, ids3[::(-1) ** k], 3)], start,
                                             wins)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    won: list[list[str]] = [[], []]
    while len(won[0]) < len(ids) or not wins.empty():
        phase, rid = wins.get(timeout=5)
        won[phase].append(rid)
    assert sorted(won[0]) == sorted(ids)                  # every request started once, none twice
    assert all(r.attempts == 1 and len(r.history) == 1 for r in q.list())
    # Never more than 3 between them (a claim that lost a race may have seen the slots full for a moment, so
    # fewer may be won); a later pass fills the free slots exactly: a lost race leaves no slot taken.
    assert len(set(won[1])) == len(won[1]) <= 3
    assert sorted(r.id for r in q3.list(("running",))) == sorted(won[1])
    later = [r.id for r in q3.list(("queued",)) if q3.claim(r.id, "queued", 0, max_running=3)]
    assert len(won[1]) + len(later) == 3 == len(q3.list(("running",)))


def test_a_slot_left_by_a_manager_that_died_is_freed(prefect_api, monkeypatch):
    """prefect://: a manager that dies after ending a request (before giving its slot back), or between taking a
    slot and claiming, must not hold max_running's slots for good."""
    from tasks.manager import prefect_queue
    from tasks.manager.prefect_queue import PrefectQueue

    q = open_queue(f"prefect://t{uuid.uuid4().hex[:8]}")
    a, b = q.submit(REQ), q.submit({**REQ, "run_dir": "/r2"})
    assert q.claim(a.id, "queued", 0, max_running=1) == 1
    with monkeypatch.context() as m:
        m.setattr(PrefectQueue, "_release_slots", lambda *_: None)  # dies right after the end is written
        assert q.finish(a.id, 1, "done")
    assert q.claim(b.id, "queued", 0, max_running=1) == 1            # a's slot was freed: its request ended

    c = q.submit({**REQ, "run_dir": "/r3"})
    assert q.finish(b.id, 1, "done")
    create = PrefectQueue._create

    def dies_before_claiming(client, name, value):
        if value.get("kind") == "claim":
            raise RuntimeError("manager died")
        return create(client, name, value)

    with monkeypatch.context() as m:
        m.setattr(PrefectQueue, "_create", staticmethod(dies_before_claiming))
        with pytest.raises(RuntimeError):
            q.claim(c.id, "queued", 0, max_running=1)                # its slot stays, naming c, still queued
    assert q.claim(c.id, "queued", 0, max_running=1) is None         # a claim in progress may hold it ...
    monkeypatch.setattr(prefect_queue, "SLOT_CLAIM_SECONDS", 0.0)
    assert q.claim(c.id, "queued", 0, max_running=1) == 1            # ... but not past a claim's time


def test_a_claim_waits_for_a_writer_instead_of_failing(tmp_path):
    path = tmp_path / "q.sqlite"
    r = Queue(path).submit(REQ)
    ctx = mp.get_context("spawn")  # fork would copy the Prefect harness's threads mid-flight
    go, wins = ctx.Event(), ctx.Queue()
    p = ctx.Process(target=race, args=([(str(path), [r.id], 0)], go, wins))
    p.start()
    # Opened after the child started: an SQLite connection must never cross a fork.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another manager holds the write lock for a moment
    go.set()
    p.join(1.5)
    assert p.is_alive()                  # blocked on the lock, not erroring out
    other.execute("COMMIT")
    p.join(30)
    assert p.exitcode == 0 and wins.get(timeout=5) == (0, r.id)


def test_a_prefect_queue_without_a_server_or_with_a_bad_name_is_one_line():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        with pytest.raises(QueueError, match="queue prefect://photos is kept on a Prefect server: set PREFECT_API_URL"):
            open_queue("prefect://photos")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens on port 9
        with pytest.raises(QueueError, match=r"queue prefect://photos: the Prefect API at http://127.0.0.1:9/api did "
                                             r"not answer \(ConnectError"):
            open_queue("prefect://photos").list()
    with pytest.raises(QueueError, match="the name takes lowercase letters, digits and dashes"):
        open_queue("prefect://Photos_1")


def test_queue_path_precedence(monkeypatch):
    monkeypatch.delenv("GANFLOW_QUEUE", raising=False)
    assert str(queue_path()) == "runs/queue.sqlite"
    assert str(queue_path(params_value="p.sqlite")) == "p.sqlite"
    monkeypatch.setenv("GANFLOW_QUEUE", "env.sqlite")
    assert str(queue_path(params_value="p.sqlite")) == "env.sqlite"
    assert str(queue_path("flag.sqlite", "p.sqlite")) == "flag.sqlite"
    assert queue_path("prefect://photos") == "prefect://photos"  # a URL, not folded into a path


def test_manager_params_from_repo_file():
    p = load(ManagerSettings, PARAMS)
    assert p.max_attempts >= 1 and p.stale_after_seconds > 180  # longer than Prefect's heartbeat period
    assert load(ManagerSettings, PARAMS, max_attempts=5).max_attempts == 5


@pytest.mark.parametrize("obs, attempt, action, crashed", [
    (Observation("COMPLETED"), 1, "done", False),
    (Observation("RUNNING", since_alive=5, process="alive"), 1, "wait", False),
    (Observation("RUNNING", since_alive=5, process="dead"), 1, "restart", True),     # SIGKILLed here
    (Observation("RUNNING", since_alive=700, process="unknown"), 1, "restart", True),  # machine gone
    (Observation("RUNNING", since_alive=700, process="alive"), 1, "restart", True),  # frozen process
    (Observation("CRASHED", "killed"), 1, "restart", False),
    (Observation("FAILED", "boom"), 3, "fail", False),                                # attempt cap
    (Observation("CANCELLED"), 1, "fail", False),
    (Observation("SCHEDULED", process="unknown", since_launch=9999), 1, "wait", False),  # waits for a worker
    (Observation(None, process="alive", since_launch=9999), 1, "wait", False),        # still importing
    (Observation(None, process="dead"), 1, "restart", False),
    (Observation(None, process="unknown", since_launch=700), 1, "restart", False),
])
def test_decisions(obs, attempt, action, crashed):
    d = decide(obs, attempt, max_attempts=3, stale_after=600)
    assert (d.action, d.mark_crashed) == (action, crashed)
    if action == "fail" and obs.run_state == "FAILED":
        assert d.reason == "gave up after 3 of 3 attempts; last: flow run failed: boom"


def test_local_process_liveness_and_kill():
    import socket
    import subprocess
    import sys
    import time

    from tasks.manager.launch import kill_local, process_state

    here = socket.gethostname()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--request-id", "abc123"],
                            start_new_session=True)
    # Popen returns when exec closes its error pipe, which the kernel does before it sets the new arguments:
    # for a moment /proc/<pid>/cmdline is empty. Wait for the arguments, as the manager's next check would.
    deadline = time.time() + 10
    while process_state(proc.pid, here, "abc123") != "alive" and time.time() < deadline:
        time.sleep(0.01)
    assert process_state(proc.pid, here, "abc123") == "alive"
    assert process_state(proc.pid, here, "other") == "dead"          # the pid now runs something else
    assert process_state(proc.pid, "another-host", "abc123") == "unknown"
    assert kill_local(proc.pid, here, "abc123")
    deadline = time.time() + 10
    while process_state(proc.pid, here, "abc123") != "dead" and time.time() < deadline:
        time.sleep(0.05)
    # "dead" can be read (a zombie in /proc) a moment before the parent's waitpid sees the exit: wait, not poll.
    assert process_state(proc.pid, here, "abc123") == "dead" and proc.wait(timeout=10) is not None
    assert not kill_local(proc.pid, here, "abc123")


def test_the_manager_launches_ganflow_train_with_every_setting_of_the_request(tmp_path):
    """A local attempt is the command a user types, `ganflow train --flow`; the one CLI accepts every setting
    a request carries and hands each, unchanged, to the train flow: training settings in its `settings`
    (TrainOverrides, as the UI form fills it), the others to the parameter of the same name."""
    import inspect

    from flows.cli import build_parser
    from flows.train import train_flow
    from flows.train_cli import flow_parameters
    from tasks.manager.launch import train_command
    from tasks.common.settings import TrainOverrides, TrainSettings

    (tmp_path / "d").mkdir()
    req = {**REQ, "data": str(tmp_path / "d"), "run_dir": str(tmp_path / "r"), "params": "/p.yaml",
           "resume_from": "-odd/ffhq.pkl", "freeze_d": 4, "restart_on_change": True, "ada_target": None,
           "xflip": False}  # a setting's false is said: params.yaml's may be true
    cmd = train_command(req, "abc123", python="py")
    assert cmd[:5] == ["py", "-m", "flows.cli", "train", "--flow"] and cmd[-2:] == ["--request-id", "abc123"]
    args = build_parser().parse_args(cmd[3:])
    assert args.command == "train" and args.request_id == "abc123"
    given = {k: v for k, v in req.items() if v is not None}
    settings = {k: v for k, v in given.items() if k in TrainSettings.model_fields}
    assert flow_parameters(args, set(inspect.signature(train_flow.fn).parameters)) == {
        **{k: v for k, v in given.items() if k not in settings}, "settings": TrainOverrides(**settings)}
    assert settings.keys() >= {"arch", "resolution", "kimg", "seed", "resume_from", "freeze_d", "xflip"}
    args = build_parser().parse_args(train_command({**req, "xflip": True}, "abc123", python="py")[3:])
    assert flow_parameters(args, set(inspect.signature(train_flow.fn).parameters))["settings"].xflip is True


def test_status_shows_checkpoint_progress_and_eta(tmp_path):
    import os

    from flows.queue_cli import status_table

    q = Queue(tmp_path / "q.sqlite")
    run = tmp_path / "run"
    req = q.submit({**REQ, "run_dir": str(run), "kimg": 1.0})
    assert q.claim(req.id, "queued", 0, start_kimg=0.0) == 1
    started = q.get(req.id).current.started
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "ckpt-000000.250.pt"
    ckpt.write_bytes(b"")  # status reads names and times only, never loads a checkpoint
    os.utime(ckpt, (started + 100, started + 100))  # 0.25 kimg in 100 s: 0.75 kimg left = 300 s
    _, row = status_table([q.get(req.id)], 3).splitlines()
    assert row.split() == [req.id, "running", "0.25", "/", "1", "1/3", ckpt.name, "0:05:00"]
    q.finish(req.id, 1, "failed", "gave up")
    _, row = status_table([q.get(req.id)], 3).splitlines()
    assert row.split()[:2] == [req.id, "failed"] and row.split()[-3:] == ["-", "gave", "up"]


# ------------------------------------------------------------------ the queue's command line: options from the settings

# Every option `ganflow train submit` and `ganflow manager` had while written by hand: users' scripts name these.
SUBMIT_OPTIONS = ["--data", "--arch", "--resolution", "--kimg", "--run-dir", "--seed", "--resume-from", "--freeze-d",
                  "--queue", "--params"]
MANAGER_OPTIONS = ["--once", "--interval", "--stale-after", "--max-attempts", "--max-running", "--deployment",
                   "--queue", "--params"]


def _command(name: str):
    from flows.cli import build_parser

    return next(a for a in build_parser()._actions if a.dest == "command").choices[name]


def _help(argv: list[str], capsys) -> str:
    """`ganflow ... --help` as the user reads it, with argparse's line wrapping undone."""
    from flows.cli import main
    from flows.cli import route_train_verbs

    with pytest.raises(SystemExit) as e:
        main(route_train_verbs([*argv, "--help"]))
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_submit_and_manager_options_come_from_the_settings_and_keep_their_names():
    from tasks.common.settings import TrainSettings

    for command, model, names in (("train-submit", TrainSettings, SUBMIT_OPTIONS),
                                  ("manager", ManagerSettings, MANAGER_OPTIONS)):
        actions = {a.dest: a for a in reversed(_command(command)._actions)}  # --xflip, not --no-xflip (same dest)
        assert set(names) <= {s for a in _command(command)._actions for s in a.option_strings}, command
        for name, field in model.model_fields.items():
            action = actions[name]
            assert "--" + name.replace("_", "-") in action.option_strings and action.default is None, name
            assert action.help.startswith(field.description), name
    manager = {a.dest: a for a in _command("manager")._actions}
    assert manager["interval_seconds"].option_strings == ["--interval-seconds", "--interval"]
    assert manager["stale_after_seconds"].option_strings == ["--stale-after-seconds", "--stale-after"]
    submit = {a.dest: a for a in _command("train-submit")._actions}
    assert submit["r1_gamma"].option_strings == ["--r1-gamma", "--gamma"]  # as on `ganflow train`
    assert submit["kimg"].required and not submit["seed"].required


def test_help_shows_each_manager_and_submit_option_with_its_bound(capsys):
    manager = _help(["manager"], capsys)
    for text in ("--interval-seconds S, --interval S `ganflow manager` without --once: one pass every this many "
                 "seconds (a finite number from 1 to 86400; default: manager.interval_seconds)",
                 "--stale-after-seconds S, --stale-after S a Running run with no heartbeat, progress or state change "
                 "for this long lost its machine (a finite number from 1 to 2592000; default: manager.stale_after_seconds)",
                 "--max-attempts N attempts per request (first run + restarts); then it is marked failed (an integer "
                 "from 1 to 1000; default: manager.max_attempts)",
                 "--max-running N requests training at once; 0 = no limit (the work pool's limit decides) (an "
                 "integer from 0 to 1000000; default: manager.max_running)",
                 "--deployment NAME empty = start training processes on this machine; train/NAME = run that "
                 "deployment (GPU work pools) (default: manager.deployment)",
                 "--queue QUEUE training request queue: a SQLite file (one machine), or prefect://NAME"):
        assert text in manager, text
    submit = _help(["train", "submit"], capsys)
    for text in ("--kimg K total kimg; 0 = the stage plan's (stylegan2/3: cycles x cycle_kimg; pggan: full growth) "
                 "(a finite number from 0 to 1000000; required)",
                 "--resolution N training resolution (a power of two from 4 to 1024, at most the dataset's) (a power "
                 "of two from 4 to 1024; default: train.resolution)",
                 "(an integer from 0 to 4294967295; default: train.seed)",
                 "--freeze-d N Freeze-D:", "(an integer from 0 to 64; default: train.freeze_d)",
                 "--arch {stylegan2,stylegan3-t,stylegan3-r,pggan}",
                 "--snapshot-kimg S checkpoint + sample grid every this many kimg (at least one image) (a finite number "
                 "from 0.001 to 1000000; default: train.snapshot_kimg)"):
        assert text in submit, text
    assert "--queue QUEUE" in _help(["train", "status"], capsys)


@pytest.mark.parametrize("argv,says", [
    (["manager", "--max-attempts", "0"], "argument --max-attempts: '0' is not an integer from 1 to 1000"),
    (["manager", "--interval", "0"], "argument --interval-seconds/--interval: '0' is not a finite number from 1 to 86400"),
    (["manager", "--stale-after", "nan"],
     "argument --stale-after-seconds/--stale-after: 'nan' is not a finite number from 1 to 2592000"),
    (["manager", "--max-running", "-1"], "argument --max-running: '-1' is not an integer from 0 to 1000000"),
    (["manager", "--queue", ""], "argument --queue: '' is not a non-empty text"),
    (["train", "status", "--queue", ""], "argument --queue: '' is not a non-empty text"),
    (["train", "submit", "--freeze-d", "65"], "argument --freeze-d: '65' is not an integer from 0 to 64"),
    (["train", "submit", "--gamma", "-3"],
     "argument --r1-gamma/--gamma: '-3' is not a finite number >= 0"),
    (["train", "submit", "--cycles", "0"], "argument --cycles: '0' is not an integer from 1 to 10000"),
])
def test_a_bad_manager_or_submit_option_is_one_line_with_exit_2(argv, says, tmp_path, capsys):
    from flows.cli import main
    from flows.cli import route_train_verbs

    if argv[:2] == ["train", "submit"]:
        argv += ["--data", str(tmp_path), "--run-dir", str(tmp_path / "r"), "--kimg", "1"]
    if "--queue" not in argv:
        argv += ["--queue", str(tmp_path / "q.sqlite")]
    with pytest.raises(SystemExit) as e:
        main(route_train_verbs([*argv, "--params", str(PARAMS)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "q.sqlite").exists()


def test_manager_options_given_reach_the_settings():
    from flows.cli.options import given_settings

    args = _command("manager").parse_args(["--once", "--interval", "5", "--stale-after", "30", "--max-running",
                                           "0", "--deployment", "", "--queue", "q.sqlite"])
    given = given_settings(args, ManagerSettings)
    assert given == {"queue": "q.sqlite", "interval_seconds": 5.0, "stale_after_seconds": 30.0, "max_running": 0,
                     "deployment": ""}
    p = load(ManagerSettings, PARAMS, **given)
    assert (p.interval_seconds, p.max_running, p.deployment, p.max_attempts) == (5.0, 0, "",
                                                                                 load(ManagerSettings).max_attempts)


def _params(tmp_path, **manager) -> str:
    import yaml

    data = yaml.safe_load(PARAMS.read_text())
    data["manager"].update(manager)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_submit_queues_the_settings_given_as_the_train_flow_takes_them(tmp_path, capsys, monkeypatch):
    """`train submit` accepts every training setting `ganflow train` does; the request carries those given (the
    others are params.yaml's when the run starts), and the manager's launch hands them to the train flow's
    settings unchanged. --kimg 0 (the stage plan's length) leaves the target to the run's first report."""
    import inspect

    from flows.cli import build_parser, main
    from flows.train import train_flow
    from flows.train_cli import flow_parameters
    from tasks.manager.launch import train_command
    from tasks.common.settings import TrainOverrides
    from tests.conftest import write_curated

    monkeypatch.delenv("GANFLOW_QUEUE", raising=False)
    data = write_curated(tmp_path / "data", n=2)
    params = _params(tmp_path, queue=str(tmp_path / "from-params.sqlite"))  # found through params.yaml
    assert main(["train", "submit", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--arch", "pggan",
                 "--resolution", "32", "--kimg", "0", "--gamma", "0.5", "--net", "{z_dim: 32}", "--snapshot-kimg",
                 "2", "--retries", "1", "--params", params]) == 0
    rid = capsys.readouterr().out.strip()
    req = Queue(tmp_path / "from-params.sqlite").get(rid)
    assert req.params == {"data": str(data), "run_dir": str(tmp_path / "run"), "arch": "pggan", "resolution": 32,
                          "kimg": 0.0, "r1_gamma": 0.5, "net": {"z_dim": 32}, "snapshot_kimg": 2.0, "retries": 1,
                          "params": params}
    assert req.kimg_target is None
    args = build_parser().parse_args(train_command(req.params, rid, python="py")[3:])
    parameters = flow_parameters(args, set(inspect.signature(train_flow.fn).parameters))
    assert parameters["settings"] == TrainOverrides(arch="pggan", resolution=32, kimg=0.0, r1_gamma=0.5,
                                                    net={"z_dim": 32}, snapshot_kimg=2.0, retries=1)
    # The run's first progress report gives the plan's length as the target.
    q = Queue(tmp_path / "from-params.sqlite")
    assert q.claim(rid, "queued", 0) == 1
    q.record_progress(rid, 1, kimg_done=0.5, kimg_target=2400.0)
    assert q.get(rid).kimg_target == 2400.0
    # --resume-from '' is a run from scratch (when params.yaml names a file), as on `ganflow train`: no file checked.
    assert main(["train", "submit", "--data", str(data), "--run-dir", str(tmp_path / "run2"), "--arch", "stylegan2",
                 "--resolution", "32", "--kimg", "1", "--resume-from", "", "--params", params]) == 0
    assert q.get(capsys.readouterr().out.strip()).params["resume_from"] == ""


def test_status_submit_and_manager_read_the_manager_section_validated_once(tmp_path, capsys, monkeypatch):
    """The queue commands load params.yaml's `manager` section as ManagerSettings: a bad value there is the same
    one-line error as anywhere (key, value, bound), before a queue file is made or read."""
    from flows.cli import main
    from tests.conftest import write_curated

    monkeypatch.delenv("GANFLOW_QUEUE", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    data = write_curated(tmp_path / "data", n=2)
    bad = _params(tmp_path, queue=str(tmp_path / "q.sqlite"), max_attempts=0)
    for argv in (["train", "status"], ["manager", "--once"],
                 ["train", "submit", "--data", str(data), "--run-dir", str(tmp_path / "r"), "--arch", "stylegan2",
                  "--resolution", "32", "--kimg", "1"]):
        assert main([*argv, "--params", bad]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ganflow {' '.join(argv[:2]) if argv[0] == 'train' else 'manager'}: error: "
                       "manager.max_attempts 0 is not an integer from 1 to 1000"], err
    assert not (tmp_path / "q.sqlite").exists()
    # A good section: its max_attempts is the status table's attempt cap, its queue the file read.
    good = _params(tmp_path, queue=str(tmp_path / "q.sqlite"), max_attempts=7)
    rid = Queue(tmp_path / "q.sqlite").submit({**REQ, "run_dir": str(tmp_path / "r")}).id
    assert main(["train", "status", "--params", good]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[0] == rid and row[5] == "0/7"


def test_status_skips_a_checkpoint_set_aside_while_it_looks(tmp_path):
    """A restart may move checkpoints to superseded/ between `train status`'s listing and its look at their
    times: the status goes on with the ones still there instead of failing."""
    from flows.queue_cli import _mtimes

    kept = tmp_path / "ckpt-000002.000.pt"
    kept.write_bytes(b"x")
    assert [k for k, _ in _mtimes([(1.0, tmp_path / "ckpt-000001.000.pt"), (2.0, kept)])] == [2.0]
