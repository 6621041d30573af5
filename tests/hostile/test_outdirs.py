"""Issue 15, point 2 (and point 5's curate/ingest cases): no command deletes or overwrites what it did not write,
and every bad curate/ingest option is one line naming it, exit code 2, before any work starts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from flows.cli import main
from tasks.common.outdir import PathError, check_dataset_dir, is_curated_dataset
from tasks.curation.publish import write_dataset
from tests.conftest import PARAMS, ROOT


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A working folder holding someone else's dataset.json and shards/*.tar, with HOME inside tmp_path."""
    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    (work / "dataset.json").write_text('{"mine": true}\n')
    (work / "shards" / "mine.tar").write_bytes(b"precious")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return work


def _untouched(work: Path) -> bool:
    return ((work / "dataset.json").read_text() == '{"mine": true}\n'
            and (work / "shards" / "mine.tar").read_bytes() == b"precious"
            and sorted(p.name for p in work.rglob("*")) == ["dataset.json", "mine.tar", "shards"])


def _curate(capsys, *args: str) -> tuple[int, list[str]]:
    rc = main(["curate", "--params", str(PARAMS), *args])
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("out, says", [
    ("", "an empty path means the current folder"),
    (".", "is the current folder or one of its parents"),
    ("..", "is the current folder or one of its parents"),
    ("/", "is the filesystem root"),
    ("~", "is your home folder"),
    ("HOME", "is your home folder"),
    ("ROOT", "is the ganflow checkout"),
    ("dataset.json", "is a file, not a folder"),
    ("shards", "is not empty and not a dataset ganflow curate wrote"),
])
def test_out_that_is_not_ganflows_is_refused_and_nothing_is_touched(scratch, capsys, out, says):
    value = {"HOME": os.environ["HOME"], "ROOT": str(ROOT)}.get(out, out)
    rc, lines = _curate(capsys, "--demo", "--out", value)
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith(f"ganflow curate: error: --out {value!r}"), lines
    assert says in lines[0]
    assert _untouched(scratch)


@pytest.mark.parametrize("option", ["--cache-dir", "--raw-root"])
def test_store_folder_that_is_a_file_is_refused(scratch, capsys, tmp_path, option):
    rc, lines = _curate(capsys, "--demo", "--out", str(tmp_path / "new"), option, "dataset.json")
    assert rc == 2 and lines == [f"ganflow curate: error: {option} 'dataset.json' is a file, not a folder"]
    assert not (tmp_path / "new").exists()


def test_resolution_out_of_range_is_refused(scratch, capsys, tmp_path):
    # The option is generated from CurateSettings: argparse refuses it, naming the value and the field's bounds.
    with pytest.raises(SystemExit) as exit_:
        _curate(capsys, "--demo", "--out", str(tmp_path / "new"), "--resolution", "100000")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and lines == [
        "ganflow curate: error: argument --resolution: '100000' is not an integer from 8 to 4096 "
        "(see `ganflow curate --help`)"]


def test_invalid_yaml_in_params_is_one_line(scratch, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate:\n  resolution: [512\n  matte: none\n")
    rc = main(["curate", "--demo", "--out", str(tmp_path / "new"), "--params", str(bad)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith(f"ganflow curate: error: params file {bad} is not valid YAML at line ")


@pytest.mark.parametrize("make", ["folder", "zip", "tar"])
def test_empty_input_is_refused(scratch, capsys, tmp_path, make):
    path = tmp_path / {"folder": "empty", "zip": "e.zip", "tar": "e.tar"}[make]
    if make == "folder":
        path.mkdir()
    elif make == "zip":
        zipfile.ZipFile(path, "w").close()
    else:
        tarfile.open(path, "w").close()
    rc, lines = _curate(capsys, "--input", str(path), "--out", str(tmp_path / "new"))
    assert rc == 2 and lines == [f"ganflow curate: error: input {path} holds no files: nothing to curate"]


def test_ingest_raw_dir_that_is_not_a_raw_store_is_refused(scratch, capsys):
    rc = main(["ingest", "--demo", "--params", str(PARAMS), "--raw-dir", "shards"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "--raw-dir 'shards' is not empty and not a ganflow raw store" in lines[0]
    assert _untouched(scratch)


def test_a_folder_ganflow_wrote_is_accepted_with_or_without_the_marker(tmp_path):
    (tmp_path / "new").mkdir()
    assert check_dataset_dir(str(tmp_path / "new")) == tmp_path / "new"   # empty
    assert check_dataset_dir(str(tmp_path / "missing")) == tmp_path / "missing"
    legacy = tmp_path / "legacy"  # written before the marker: its own fields and a manifest
    legacy.mkdir()
    (legacy / "dataset.json").write_text(json.dumps({"count": 0, "content_hash": "x", "shards": [], "reasons": {}}))
    (legacy / "manifest.jsonl").write_text("")
    assert is_curated_dataset(legacy) and check_dataset_dir(str(legacy)) == legacy
    (legacy / "manifest.jsonl").unlink()
    with pytest.raises(PathError, match="not empty and not a dataset ganflow curate wrote"):
        check_dataset_dir(str(legacy))


def test_rewriting_a_dataset_removes_only_its_own_stale_shards(tmp_path):
    """Rerunning into a dataset folder: ganflow's stale shard-NNNNNN.tar go, anything else stays."""
    out = tmp_path / "out"
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG fake")
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "shard-000007.tar").write_bytes(b"stale")
    (out / "shards" / "notes.tar").write_bytes(b"mine")
    from tasks.curation.publish import Record

    rec = Record(id="a" * 64, source="folder", source_name="a.png", status="accepted", reason=None)
    meta = write_dataset(out, [rec], {rec.id: png}, 8, 10)
    assert meta["generator"] == "ganflow" and is_curated_dataset(out)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["notes.tar", "shard-000000.tar"]


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(cwd.parent / "home")}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_reported_data_loss_reproduced_out_empty_is_refused_as_a_user_runs_it(scratch):
    """The report: `ganflow curate --out ""` overwrote ./dataset.json and deleted ./shards/*.tar."""
    out = _cli(scratch, "curate", "--demo", "--out", "", "--params", str(PARAMS))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "ganflow curate: error: --out '': an empty path means the current folder; name a folder"]
    assert "Traceback" not in out.stdout + out.stderr
    assert _untouched(scratch)


@pytest.mark.parametrize("args, says", [
    (("--resolution", "100000"), "argument --resolution: '100000' is not an integer from 8 to 4096 "
                                 "(see `ganflow curate --help`)"),
    (("--dask", "tcp://a b"), "argument --dask-address/--dask: 'tcp://a b' is not a scheduler address like "
                              "tcp://host:8786 (or empty) (see `ganflow curate --help`)"),
    (("--cache-dir", "dataset.json"), "--cache-dir 'dataset.json' is a file, not a folder"),
])
def test_bad_curate_option_is_one_line_exit_2_in_a_real_process(scratch, tmp_path, args, says):
    out = _cli(scratch, "curate", "--demo", "--out", str(tmp_path / "new"), "--params", str(PARAMS), *args)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [f"ganflow curate: error: {says}"]
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.parametrize("out, says", [
    (".", "is the current folder or one of its parents"),
    ("shards", "is not empty and not a folder ganflow generate wrote"),
])
def test_generate_never_writes_over_a_folder_it_did_not_write(scratch, tmp_path, capsys, out, says):
    snapshot = tmp_path / "snap.pt"  # never loaded: the output folder is refused first
    snapshot.write_bytes(b"not read")
    rc = main(["generate", "--snapshot", str(snapshot), "--seeds", "0", "--out", out])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(f"ganflow generate: error: --out {out!r}")
    assert says in lines[0]
    assert _untouched(scratch)


def test_a_folder_generate_wrote_is_accepted(tmp_path):
    from tasks.common.outdir import check_generated_dir

    (tmp_path / "seeds").mkdir()
    for name in ("seed0001.png", "seed0002.png", "grid.png"):
        (tmp_path / "seeds" / name).write_bytes(b"png")
    assert check_generated_dir(str(tmp_path / "seeds")) == tmp_path / "seeds"
    (tmp_path / "seeds" / "holiday.png").write_bytes(b"mine")
    with pytest.raises(PathError):
        check_generated_dir(str(tmp_path / "seeds"))
