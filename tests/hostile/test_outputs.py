"""Issue 28, point 1: every file ganflow writes follows one rule (models.atomic_file.publish): it never replaces a
file or folder it did not write, never writes into a dataset or a special file, publishes atomically, and a rerun
after SIGKILL or a full disk succeeds and leaves no temp files. A curated dataset is replaced whole or not at all,
and training checks the shards against dataset.json before using them."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.atomic_file import TMP_SUFFIX, DiskFullError, OutputError
from models.checkpoint import save_atomic
from models.data import DatasetError, load_images
from tasks.curation.publish import Record, write_dataset
from tests.conftest import ROOT
from tests.one_line import refused

PICKLE = ROOT / "tests" / "data" / "nvidia_pickles" / "stylegan2.pkl.gz"


def _pngs(folder: Path, n: int, seed: int = 0) -> tuple[list[Record], dict[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records, pngs = [], {}
    for i in range(n):
        path = folder / f"{seed}-{i}.png"
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
        rid = f"{seed:02d}{i:062d}"
        records.append(Record(id=rid, source="folder", source_name=path.name, status="accepted", reason=None))
        pngs[rid] = path
    return records, pngs


def dataset(out: Path, n: int = 6, seed: int = 0, shard_size: int = 2) -> dict:
    records, pngs = _pngs(out.parent / f"src{seed}", n, seed)
    return write_dataset(out, records, pngs, 8, shard_size)


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if TMP_SUFFIX in p.name or ".ganflow-new" in p.name
                  or ".ganflow-old" in p.name or p.name.startswith(".tmp-"))


# ------------------------------------------------------------------------------------------ import --out


@pytest.fixture
def victims(tmp_path):
    """Files `ganflow import --out` was once pointed at and replaced."""
    readme = tmp_path / "README.md"
    readme.write_text("# my notes\n")
    data = tmp_path / "data"
    dataset(data)
    mine = tmp_path / "net.pkl.gz"
    shutil.copy(PICKLE, mine)
    link = tmp_path / "link.pt"
    link.symlink_to(readme)
    (tmp_path / "folder.pt").mkdir()
    return {"a README": (readme, "exists and is not a ganflow network"),
            "a dataset's dataset.json": (data / "dataset.json", "is inside"),
            "its own input": (mine, "exists and is not a ganflow network"),
            "a character device": (Path("/dev/null"), "is a special file"),
            "a link": (link, "is a link"),
            "a folder": (tmp_path / "folder.pt", "is a folder")}


@pytest.mark.parametrize("victim", ["a README", "a dataset's dataset.json", "its own input", "a character device",
                                    "a link", "a folder"])
def test_import_out_never_replaces_what_ganflow_did_not_write(victims, victim, capsys, tmp_path):
    path, says = victims[victim]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    source = str(tmp_path / "net.pkl.gz")
    refused(["import", source, "--out", str(path)], capsys, "--out", says)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before and not _leftovers(tmp_path)


def test_import_replaces_its_own_output(tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "net.pt"
    assert main(["import", str(PICKLE), "--out", str(out)]) == 0
    assert main(["import", str(PICKLE), "--out", str(out)]) == 0  # a rerun replaces the file it wrote
    assert torch.load(out, weights_only=True)["format"] == "ganflow-network-1"
    assert not _leftovers(tmp_path)


def test_best_pt_is_never_written_over_a_file_ganflow_did_not_write(tmp_path):
    theirs = tmp_path / "best.pt"
    theirs.write_bytes(b"someone's best")
    with pytest.raises(OutputError, match="exists and is not a ganflow network or checkpoint file"):
        save_atomic({"G_ema": {}, "arch": {"name": "stylegan2"}}, theirs)
    assert theirs.read_bytes() == b"someone's best" and not _leftovers(tmp_path)


# ------------------------------------------------------------------------------------------ temp files, disk full


def test_a_killed_writers_temp_file_is_removed_by_the_next_write_and_a_live_ones_kept(tmp_path):
    stale = tmp_path / f".ckpt-1.pt.0badc0de{TMP_SUFFIX}.pt"
    stale.write_bytes(b"half a checkpoint")  # its writer was SIGKILLed: nobody holds its lock
    live = tmp_path / f".ckpt-2.pt.0badc0df{TMP_SUFFIX}.pt"
    live.write_bytes(b"being written")
    with open(live, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # a writer still at work
        save_atomic({"G_ema": {}, "arch": {"name": "stylegan2"}}, tmp_path / "ckpt-3.pt")
        assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "ckpt-3.pt"]


class _FullDisk:
    """A file object whose writes fail with ENOSPC after `room` bytes (a full disk, simulated by monkeypatching the
    write: a tiny tmpfs needs root)."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_is_one_line_naming_the_path_and_the_bytes_and_the_old_file_stays(tmp_path, monkeypatch, capsys):
    import models.checkpoint as ckpt

    out = tmp_path / "net.pt"
    from flows.cli import main

    assert main(["import", str(PICKLE), "--out", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(ckpt, "open", lambda p, mode="r": _FullDisk(open(p, mode), 4096), raising=False)
    with pytest.raises(DiskFullError) as e:
        save_atomic(torch.load(out, weights_only=True), out)
    assert str(out) in str(e.value) and "needed" in str(e.value)
    line = refused(["import", str(PICKLE), "--out", str(out)], capsys, str(out), "the disk is full", "needed")
    assert line.count(str(out)) == 1 and "inline_container" not in line
    assert out.read_bytes() == before and not _leftovers(tmp_path)


# ------------------------------------------------------------------------------------------ curated datasets


def test_rerunning_an_identical_curate_rewrites_nothing(tmp_path):
    out = tmp_path / "out"
    dataset(out)
    inodes = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    dataset(out)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()} == inodes
    assert not _leftovers(tmp_path)


def test_a_new_version_replaces_the_old_whole_and_keeps_files_ganflow_did_not_write(tmp_path):
    out = tmp_path / "out"
    dataset(out, n=6)
    (out / "NOTES.md").write_text("mine")
    (out / "shards" / "notes.tar").write_bytes(b"mine too")
    (out / "extra").mkdir()
    (out / "extra" / "a.txt").write_text("kept")
    meta = dataset(out, n=3, seed=1)
    assert json.loads((out / "dataset.json").read_text()) == meta and len(load_images(out, 8)) == 3
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "NOTES.md", "dataset.json", "extra", "extra/a.txt", "manifest.jsonl", "shards", "shards/notes.tar",
        "shards/shard-000000.tar", "shards/shard-000001.tar"]
    assert (out / "shards" / "notes.tar").read_bytes() == b"mine too" and not _leftovers(tmp_path)


_KILL_MID_SHARD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import tasks.curation.publish as publish
    from tests.hostile.test_outputs import _pngs
    real = publish._write_tar
    def dying(path, members):
        if path.name == "shard-000001.tar":  # half of the second shard written, then SIGKILL
            path.write_bytes(b"half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, members)
    publish._write_tar = dying
    out = {out!r}
    records, pngs = _pngs(__import__("pathlib").Path(out).parent / "src9", 6, 9)
    publish.write_dataset(out, records, pngs, 8, 2)
""")


@pytest.mark.parametrize("fresh", [False, True])
def test_a_curate_killed_mid_shard_leaves_the_old_dataset_and_a_rerun_succeeds_clean(tmp_path, fresh):
    out = tmp_path / "out"
    if not fresh:
        dataset(out, n=6)
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} if not fresh else {}
    code = _KILL_MID_SHARD.format(root=str(ROOT), out=str(out))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == -9, run.stderr
    if fresh:
        assert not out.exists()  # absent, never half-written
    else:  # the old version, whole: every shard matches its sha256 in dataset.json
        assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == old
        assert len(load_images(out, 8)) == 6
    assert _leftovers(tmp_path)  # the killed writer's version folder, until the rerun
    meta = dataset(out, n=3, seed=1)
    assert meta["count"] == 3 and len(load_images(out, 8)) == 3 and not _leftovers(tmp_path)


def test_train_refuses_shards_that_do_not_match_dataset_json(tmp_path):
    out = tmp_path / "out"
    dataset(out, n=6)
    shard = out / "shards" / "shard-000001.tar"
    other = tmp_path / "other"
    dataset(other, n=2, seed=3)
    shutil.copy(other / "shards" / "shard-000000.tar", shard)  # a valid tar, not the one dataset.json names
    with pytest.raises(DatasetError, match="does not match the sha256 dataset.json records"):
        load_images(out, 8)
    from tasks.evaluation.metrics import dataset_batches

    with pytest.raises(DatasetError, match="shard-000001.tar does not match"):  # FID's real statistics too
        list(dataset_batches(out))


@pytest.mark.parametrize("where", ["the dataset", "its shards", "another dataset"])
def test_train_run_dir_in_a_dataset_is_refused(tmp_path, capsys, where):
    data = tmp_path / "data"
    dataset(data)
    dataset(tmp_path / "other")
    run = {"the dataset": data, "its shards": data / "shards", "another dataset": tmp_path / "other" / "run"}[where]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    refused(["train", "--data", str(data), "--run-dir", str(run), "--kimg", "0.004", "--resolution", "8"], capsys,
            "--run-dir", "checkpoints never go into a dataset")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", ["generate", "morph"])
def test_generate_and_morph_never_write_into_a_dataset(tmp_path, capsys, command):
    data = tmp_path / "data"
    dataset(data)
    snapshot = tmp_path / "x.pt"
    snapshot.write_bytes(b"never read")
    out = data / "shards" if command == "generate" else data / "morph.gif"
    refused([command, "--snapshot", str(snapshot), "--seeds", "1,2", "--out", str(out)], capsys, "--out",
            "inside", "a curated dataset")
