"""One writer per run folder (tasks/training/lease.py): a second `ganflow train` or train flow on a folder that a
live run holds is refused at once, naming the holder; a holder that died is taken over; a holder that was taken
over while frozen stops writing."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, write_curated

HOLD = ("import sys, time\nfrom tasks.training.lease import acquire\n"
        "acquire(sys.argv[1], command='the other run')\nprint('held', flush=True)\ntime.sleep(120)\n")


@pytest.fixture
def other_writer(tmp_path):
    """A process on this machine holding tmp_path/run's lease (as another `ganflow train` would); yields it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    yield proc
    proc.kill()
    proc.wait()


def test_second_train_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path, other_writer,
                                                                                     capsys):
    from flows.cli import main
    from tasks.training.lease import holder, run_dir_lease

    data = write_curated(tmp_path / "data", n=4, side=32)
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--run-dir", str(run), "--arch", "stylegan2", "--resolution", "32",
            "--kimg", "0.004"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"ganflow train: error: {run} is in use by another run: "
                                              f"pid {other_writer.pid} on {socket.gethostname()}, since ")
    assert "(the other run)" in err
    assert not (run / "checkpoints").exists()  # refused before anything was written

    other_writer.send_signal(signal.SIGKILL)  # the holder dies without releasing: its process is gone, taken at once
    other_writer.wait()
    with run_dir_lease(run) as lease:
        assert lease.gen == 2 and holder(run).token == lease.record.token
    assert holder(run) is None  # released on the way out


def test_a_holder_elsewhere_is_live_until_its_heartbeat_is_older_than_its_ttl(tmp_path):
    from tasks.training.lease import RunDirBusy, acquire

    run = tmp_path / "run"
    (run / "lease").mkdir(parents=True)
    record = {"token": "t", "host": "gpu-node-7", "pid": 1, "since": time.time() - 3600, "heartbeat": time.time() - 5,
              "ttl_s": 60, "flow_run_id": "0b5d", "flow_run_name": "train-demo-sg2-64", "command": "", "released": False}
    (run / "lease" / "00000003.json").write_text(json.dumps(record))
    with pytest.raises(RunDirBusy, match=r"pid 1 on gpu-node-7 \(flow run 0b5d 'train-demo-sg2-64'\), since "):
        acquire(run)
    (run / "lease" / "00000003.json").write_text(json.dumps({**record, "heartbeat": time.time() - 61}))
    lease = acquire(run)  # a lost machine: its heartbeat stopped more than a ttl ago
    lease.release()
    assert lease.gen == 4


def test_a_holder_taken_over_while_frozen_stops_at_its_next_step(tmp_path):
    from tasks.training.lease import LeaseLost, _Files, acquire, guarded

    run = tmp_path / "run"
    lease = acquire(run)
    steps: list[dict] = []
    progress = guarded(lease, steps.append)
    progress({"kimg": 0.004})
    # What a taker does once this holder's heartbeat is stale: create the next generation exclusively.
    assert _Files(run).create(lease.gen + 1, lease.record) and not _Files(run).create(lease.gen + 1, lease.record)
    lease.renew()  # the heartbeat after the freeze finds the newer generation
    with pytest.raises(LeaseLost, match="lease was taken over"):
        progress({"kimg": 0.008})
    assert steps == [{"kimg": 0.004}]
    lease.release()  # does not mark the new holder's record released
    assert not json.loads((run / "lease" / f"{lease.gen + 1:08d}.json").read_text())["released"]


def test_train_flow_holds_the_lease_with_its_flow_run_and_a_second_flow_is_refused(tmp_path, prefect_api,
                                                                                  other_writer):
    from prefect import flow
    from prefect.runtime import flow_run

    from flows.train import train_flow
    from tasks.training.lease import holder, run_dir_lease

    data = write_curated(tmp_path / "data", n=4, side=32)
    state = train_flow(data=str(data), run_dir=str(tmp_path / "run"), settings={"arch": "stylegan2", "resolution": 32,
                                                                                 "kimg": 0.004}, return_state=True)
    assert state.is_failed()
    assert f"is in use by another run: pid {other_writer.pid} on " in state.message

    @flow(name="lease-holder-test")
    def holds(run_dir: str) -> tuple[str, str | None]:
        with run_dir_lease(run_dir):
            return str(flow_run.id), holder(run_dir).flow_run_id

    run_id, held_by = holds(str(tmp_path / "other-run"))
    assert held_by == run_id
