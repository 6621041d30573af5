"""Bad arguments to train, generate, morph, serve, evaluate, fid and the training queue (issue 15, points 5 and 6):
each is refused before any work with one line on stderr naming the option, the value and the rule, exit code 2,
never a traceback. Most run in-process (flows.cli.main); a few as real `ganflow` subprocesses prove that nothing
else reaches stderr. Queue files that are corrupt, torn, of another schema or hold rows in an unknown state are
one-line errors naming the file, or shown with a warning, never hidden."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import main
from tests.conftest import ROOT, write_curated
from tests.one_line import refused

RUN_DIR = "runs/never-written"  # relative to tmp_path: no command below may create it


@pytest.fixture(scope="module")
def data64(tmp_path_factory) -> Path:
    return write_curated(tmp_path_factory.mktemp("cli") / "data64", n=4, side=64)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, one_torch_thread) -> Path:
    from tests.hostile.crafted import tiny_run

    return tiny_run(tmp_path_factory.mktemp("cli-run"))[1] / "best.pt"


# ------------------------------------------------------------------ train
TRAIN_BAD = [
    (["--device", "bogus"], ["--device", "'bogus'", "cuda:N"]),
    (["--device", "cuda:99"], ["--device", "cuda:99", "CUDA device"]),
    (["--channel-base", "-1"], ["--channel-base", "'-1'", "from 1"]),
    (["--channel-max", "x"], ["--channel-max", "'x'", "integer"]),
    (["--channel-base", "1"], ["channel_base 1", "leaves no feature maps at 64"]),  # was a ZeroDivisionError
    (["--kimg", "-1"], ["--kimg", "'-1'", "from 0 to 1000000"]),  # train.kimg: 0 = the stage plan's length, as in params.yaml
    (["--kimg", "nan"], ["--kimg", "'nan'", "finite"]),
    (["--kimg", "inf"], ["--kimg", "'inf'", "finite"]),
    (["--snapshot-kimg", "0"], ["--snapshot-kimg", "'0'", "from 0.001 to 1000000"]),
    (["--ada-target", "nan"], ["--ada-target", "'nan'", "finite number from 0 to 1"]),
    (["--ada-target", "2"], ["--ada-target", "'2'", "from 0 to 1"]),
    (["--resolution", "48"], ["--resolution", "'48'", "power of two"]),
    (["--resolution", "0"], ["--resolution", "'0'", "power of two"]),
    (["--resolution", "128"], ["--resolution 128", "64²", "dataset.json"]),  # above the data's 64²
    (["--batch", "-4"], ["--batch", "'-4'"]),
    (["--seed", "-1"], ["--seed", "'-1'"]),
    (["--fade-kimg", "-1"], ["--fade-kimg", "'-1'"]),
    (["--stabilize-kimg", "0"], ["--stabilize-kimg", "'0'"]),
    (["--arch", "gan"], ["--arch", "'gan'"]),
    (["--preset", "small"], ["train.preset 'small' is not a preset of stylegan2", "paper256"]),  # pggan's
    (["--net", "{bogus: 1}"], ["train.net key 'bogus' is not a network setting of stylegan2", "z_dim"]),  # TypeError
]


@pytest.mark.parametrize("extra,says", TRAIN_BAD, ids=[" ".join(a) for a, _ in TRAIN_BAD])
def test_train_refuses_bad_arguments_before_any_work(extra, says, data64, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # params.yaml
    run = tmp_path / RUN_DIR
    refused(["train", "--data", str(data64), "--run-dir", str(run), "--arch", "stylegan2", "--resolution", "64",
             "--kimg", "0.004", "--device", "cpu", *extra], capsys, *says)
    assert not run.exists()


def test_train_run_dir_that_is_a_file_is_refused(data64, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(["train", "--data", str(data64), "--run-dir", str(afile / "run")], capsys,
            "--run-dir", "a folder", "is a file")
    refused(["train", "--data", str(data64), "--run-dir", str(afile)], capsys, "--run-dir", "is a file")


def test_a_read_only_run_folder_is_refused_before_work(data64, tmp_path, capsys):
    """As a user who cannot write there. Root writes anywhere, so as root the check runs with the effective uid of
    nobody (seteuid; the real uid stays root, which restores it), the folder's path first on the command line."""
    base = Path("/tmp") / f"ganflow-ro-{os.getpid()}"  # pytest's tmp_path is root-only: nobody could not look in
    ro = base / "ro-run"
    ro.mkdir(parents=True)
    base.chmod(0o755)
    ro.chmod(0o555)
    commands = (["train", "--run-dir", str(ro / "r"), "--data", str(data64)],
                ["evaluate", "--run-dir", str(ro), "--data", str(data64)],
                ["generate", "--out", str(ro / "o"), "--snapshot", "x.pt", "--seeds", "1"],
                ["morph", "--out", str(ro / "m.gif"), "--snapshot", "x.pt", "--seeds", "1,2"])
    try:
        for argv in commands:
            if os.geteuid() == 0:
                os.seteuid(65534)
            try:
                refused(argv, capsys, argv[1], str(ro), "read-only")
            finally:
                if os.getuid() == 0:
                    os.seteuid(0)
    finally:
        ro.chmod(0o755)
        ro.rmdir()
        base.rmdir()


# ------------------------------------------------------------------ generate, morph
GENERATE_BAD = [
    (["--seeds", "0-1000000000000"], ["--seeds", "'0-1000000000000'", "out of range"]),  # was a MemoryError
    (["--seeds", "0-4000000000"], ["--seeds", "more than 10,000 seeds"]),
    (["--seeds", "1,2,0-9999"], ["--seeds", "more than 10,000 seeds"]),
    (["--seeds", "0-99999999999999999999999"], ["--seeds", "out of range"]),
    (["--seeds", "5000000000"], ["--seeds", "out of range"]),
    (["--seeds", "-3"], ["--seeds", "0-63"]),
    (["--seeds", ""], ["--seeds", "no seeds"]),
    (["--trunc", "nan"], ["--trunc", "'nan'", "from 0 to 2"]),
    (["--trunc", "inf"], ["--trunc", "'inf'", "finite"]),
    (["--trunc", "3"], ["--trunc", "'3'", "from 0 to 2"]),
    (["--resolution", "0"], ["--resolution", "'0'", "from 4 to 4096"]),
    (["--resolution", "100000"], ["--resolution", "'100000'", "from 4 to 4096"]),
]


@pytest.mark.parametrize("extra,says", GENERATE_BAD, ids=[" ".join(a) for a, _ in GENERATE_BAD])
def test_generate_refuses_bad_arguments(extra, says, snapshot, tmp_path, capsys):
    out = tmp_path / "out"
    base = {"--snapshot": str(snapshot), "--seeds": "1", "--out": str(out)}
    base.update(dict(zip(extra[::2], extra[1::2])))
    refused(["generate", *[x for kv in base.items() for x in kv]], capsys, *says)
    assert not out.exists()


def test_generate_snapshot_and_out_are_checked(snapshot, tmp_path, capsys):
    refused(["generate", "--snapshot", str(tmp_path / "none.pt"), "--seeds", "1", "--out", str(tmp_path / "o")],
            capsys, "--snapshot", "none.pt", "existing file")
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(["generate", "--snapshot", str(snapshot), "--seeds", "1", "--out", str(afile)], capsys,
            "--out", "is a file")


MORPH_BAD = [
    (["--fps", "0"], ["--fps", "'0'", "from 0.5 to 120"]),
    (["--fps", "nan"], ["--fps", "'nan'"]),
    (["--fps", "1e9"], ["--fps", "'1e9'"]),
    (["--frames", "0"], ["--frames", "'0'", "from 2 to 3600"]),
    (["--frames", "100000000"], ["--frames", "'100000000'"]),
    (["--frames", "2", "--seeds", "1,2,3"], ["--frames 2", "3 seeds"]),
    (["--seeds", "1"], ["--seeds", "at least 2 seeds"]),
    (["--trunc", "nan"], ["--trunc", "'nan'"]),
    (["--resolution", "0"], ["--resolution", "'0'"]),
]


@pytest.mark.parametrize("extra,says", MORPH_BAD, ids=[" ".join(a) for a, _ in MORPH_BAD])
def test_morph_refuses_bad_arguments(extra, says, snapshot, tmp_path, capsys):
    out = tmp_path / "m.gif"
    base = {"--snapshot": str(snapshot), "--seeds": "1,2", "--frames": "4", "--out": str(out)}
    base.update(dict(zip(extra[::2], extra[1::2])))
    refused(["morph", *[x for kv in base.items() for x in kv]], capsys, *says)
    assert not out.exists()


# ------------------------------------------------------------------ serve, evaluate, fid
@pytest.mark.parametrize("extra,says", [
    (["--port", "99999"], ["--port", "'99999'", "from 1 to 65535"]),
    (["--port", "0"], ["--port", "'0'"]),
    (["--port", "http"], ["--port", "'http'"]),
    (["--device", "gpu!"], ["--device", "'gpu!'"]),
    (["--queue", "-1"], ["--queue", "'-1'"]),
    (["--max-wait", "0"], ["--max-wait", "'0'"]),
])
def test_serve_refuses_bad_arguments(extra, says, snapshot, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served despite a bad argument"))
    refused(["serve", "--snapshot", str(snapshot), *extra], capsys, *says)


@pytest.mark.parametrize("extra,says", [
    (["--n-fake", "0"], ["--n-fake", "'0'", "from 2"]),
    (["--n-fake", "-5"], ["--n-fake", "'-5'"]),
    (["--device", "bogus"], ["--device", "'bogus'"]),
])
def test_evaluate_refuses_bad_arguments(extra, says, snapshot, tmp_path, capsys):
    refused(["evaluate", "--run-dir", str(snapshot.parent), "--data", str(tmp_path), *extra], capsys, *says)


def test_evaluate_data_must_be_a_folder(snapshot, tmp_path, capsys):
    refused(["evaluate", "--run-dir", str(snapshot.parent), "--data", str(tmp_path / "none")], capsys,
            "--data", "existing folder")


@pytest.mark.parametrize("extra,says", [
    (["--kid-subsets", "0"], ["--kid-subsets", "'0'"]),
    (["--kid-subset-size", "1"], ["--kid-subset-size", "'1'"]),
])
def test_fid_refuses_bad_arguments(extra, says, tmp_path, capsys):
    refused(["fid", str(tmp_path), str(tmp_path), *extra], capsys, *says)


# ------------------------------------------------------------------ the queue: submit
@pytest.mark.parametrize("extra,says", [
    (["--resolution", "3"], ["--resolution", "'3'", "power of two"]),
    (["--kimg", "-1"], ["--kimg", "'-1'", "from 0 to 1000000"]),   # 0 is the stage plan's length, as for `ganflow train`
    (["--kimg", "nan"], ["--kimg", "'nan'", "finite"]),
    (["--seed", "x"], ["--seed", "'x'"]),
    (["--resolution", "128"], ["--resolution 128", "64²"]),
    (["--freeze-d", "2"], ["train.freeze_d 2 keeps a pretrained discriminator's first layers"]),
    (["--resume-from", "nowhere.pt"], ["--resume-from 'nowhere.pt' is not an existing file"]),
    (["--preset", "bogus"], ["train.preset 'bogus' is not a preset of stylegan2"]),  # was queued
    (["--net", "{bogus: 1}"], ["train.net key 'bogus' is not a network setting of stylegan2"]),
])
def test_train_submit_refuses_bad_arguments(extra, says, data64, tmp_path, capsys):
    queue = tmp_path / "queue.sqlite"
    base = {"--data": str(data64), "--arch": "stylegan2", "--resolution": "64", "--kimg": "1",
            "--run-dir": str(tmp_path / "r"), "--queue": str(queue)}
    base.update(dict(zip(extra[::2], extra[1::2])))
    refused(["train", "submit", *[x for kv in base.items() for x in kv]], capsys, *says)
    assert not queue.exists()  # nothing queued, not even a file made


# ------------------------------------------------------------------ the queue: unreadable files, unknown rows
def _queue_with_one_request(path: Path, data: Path) -> None:
    from tasks.manager.queue import Queue

    Queue(path).submit({"data": str(data), "run_dir": str(path.parent / "run"), "arch": "stylegan2",
                        "resolution": 64, "kimg": 1.0, "seed": 0})


def _damaged_queue(damage: str, data: Path, tmp_path: Path) -> Path:
    queue = tmp_path / "queue.sqlite"
    if damage == "random-bytes":
        queue.write_bytes(os.urandom(5000))
    elif damage == "torn":
        _queue_with_one_request(queue, data)
        raw = queue.read_bytes()
        queue.write_bytes(raw[: len(raw) // 2 + 100])
    elif damage == "wrong-schema":
        db = sqlite3.connect(queue)
        db.execute("CREATE TABLE requests (id TEXT, colour TEXT)")
        db.execute("INSERT INTO requests VALUES ('x', 'blue')")
        db.commit()
        db.close()
    elif damage == "folder":
        queue.mkdir()
    else:
        _queue_with_one_request(queue, data)
        db = sqlite3.connect(queue)
        db.execute("UPDATE requests SET params = '{torn json'")
        db.commit()
        db.close()
    return queue


@pytest.mark.parametrize("damage", ["random-bytes", "torn", "wrong-schema", "folder", "bad-params"])
def test_train_status_on_an_unreadable_queue_is_one_line_naming_it(damage, data64, tmp_path, capsys):
    queue = _damaged_queue(damage, data64, tmp_path)
    line = refused(["train", "status", "--queue", str(queue)], capsys, str(queue))
    assert line.startswith("ganflow train status: error:")


@pytest.mark.parametrize("damage", ["random-bytes", "wrong-schema", "folder", "bad-params"])
def test_manager_on_an_unreadable_queue_is_one_line_naming_it_before_any_flow_run(damage, data64, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the queue is checked before the API is asked for
    queue = _damaged_queue(damage, data64, tmp_path)
    line = refused(["manager", "--once", "--queue", str(queue)], capsys, str(queue))
    assert line.startswith("ganflow manager: error:")


def test_train_status_shows_rows_in_an_unknown_state(data64, tmp_path, capsys):
    queue = tmp_path / "queue.sqlite"
    _queue_with_one_request(queue, data64)
    db = sqlite3.connect(queue)
    db.execute("UPDATE requests SET state = 'paused'")
    db.commit()
    db.close()
    assert main(["train", "status", "--queue", str(queue)]) == 0
    out, err = capsys.readouterr()
    assert "paused" in out and "no training requests" not in out
    assert "warning" in err and "'paused'" in err and "Traceback" not in err


# ------------------------------------------------------------------ real processes: nothing but the one line
def _ganflow(argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, **kw)


def test_subprocesses_print_one_line_and_no_traceback(snapshot, data64, tmp_path):
    queue = tmp_path / "q.sqlite"
    queue.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    cases = [
        (["generate", "--snapshot", str(snapshot), "--seeds", "0-1000000000000", "--out", str(tmp_path / "o")],
         "--seeds"),
        (["morph", "--snapshot", str(snapshot), "--seeds", "1,2", "--fps", "0", "--out", str(tmp_path / "m.gif")],
         "--fps"),
        (["train", "status", "--queue", str(queue)], str(queue)),
        (["train", "--data", str(data64), "--run-dir", str(tmp_path / "r"), "--resolution", "128",
          "--device", "cpu"], "--resolution 128"),
    ]
    for argv, says in cases:
        p = _ganflow(argv)
        assert p.returncode == 2, (argv, p.stderr)
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and says in p.stderr, (argv, p.stderr)
        assert p.stdout == ""


def test_debug_shows_the_traceback(tmp_path):
    queue = tmp_path / "q.sqlite"
    queue.write_bytes(os.urandom(3000))
    p = _ganflow(["--debug", "train", "status", "--queue", str(queue)])
    assert p.returncode != 0 and "Traceback" in p.stderr and "QueueError" in p.stderr
