"""models.run_dir.RunDir, the one place that names a run folder's files. The names are a contract with users,
dvc.yaml's outs and the README: these tests spell them out literally, so a change to one fails here."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from models.run_dir import RunDir, checkpoint_kimg, checkpoint_name, samples_name

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_and_folder_has_its_documented_name(tmp_path):
    run = RunDir(str(tmp_path))  # a str is accepted and kept as a Path
    assert run.path == tmp_path
    assert run.checkpoints == tmp_path / "checkpoints"
    assert run.checkpoint(12.5) == tmp_path / "checkpoints" / "ckpt-000012.500.pt"
    assert run.samples == tmp_path / "samples"
    assert run.sample_grid(0.008) == tmp_path / "samples" / "fakes-000000.008.png"
    assert (run.best, run.fid_csv, run.metrics) == (tmp_path / "best.pt", tmp_path / "fid.csv",
                                                    tmp_path / "metrics.json")
    assert run.superseded == tmp_path / "superseded"
    assert run.attempt_log(2) == tmp_path / "attempt-2.log"
    assert run.set_aside_on_restart == (tmp_path / "checkpoints", tmp_path / "samples")
    with pytest.raises(AttributeError):
        run.path = Path("elsewhere")  # frozen: a layout is a value


def test_names_sort_in_training_order_and_read_back():
    kimgs = [0.004, 0.008, 1.0, 12.0, 100.5, 25000.0]
    assert sorted(map(checkpoint_name, kimgs)) == [checkpoint_name(k) for k in kimgs]
    assert sorted(map(samples_name, kimgs)) == [samples_name(k) for k in kimgs]
    assert [checkpoint_kimg(checkpoint_name(k)) for k in kimgs] == kimgs
    for other in ("ckpt-latest.pt", "ckpt-1.pt.tmp", ".ckpt-abc.tmp", "fakes-000001.000.png", "ckpt-.pt"):
        assert checkpoint_kimg(other) is None, other


def test_listings_find_only_what_is_named_like_a_checkpoint_or_grid(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint_files() == [] and run.sample_grids() == [] and run.newest_sample_grid() is None
    run.checkpoints.mkdir()
    run.samples.mkdir()
    for k in (8.0, 0.004, 1.5):
        run.checkpoint(k).write_bytes(b"x")
        run.sample_grid(k).write_bytes(b"x")
    (run.checkpoints / ".ckpt-x1y2.tmp").write_bytes(b"")  # save_atomic's temp file, mid-write
    (run.checkpoints / "ckpt-best.pt").write_bytes(b"")
    (run.samples / "notes.png").write_bytes(b"")
    assert run.checkpoint_files() == [(0.004, run.checkpoint(0.004)), (1.5, run.checkpoint(1.5)),
                                      (8.0, run.checkpoint(8.0))]
    assert run.sample_grids() == [run.sample_grid(0.004), run.sample_grid(1.5), run.sample_grid(8.0)]
    assert run.newest_sample_grid() == run.sample_grid(8.0)


def _tricky_run(tmp_path) -> RunDir:
    """A run folder where the newest checkpoint by kimg is neither the newest file nor the last name in text order."""
    import os

    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    for k in (12.0, 0.004, 1.5):  # 12 written first: the oldest file is the newest checkpoint
        run.checkpoint(k).write_bytes(b"x")
    (run.checkpoints / "ckpt-9.pt").write_bytes(b"x")  # by hand, unpadded: sorts after 12 as text, not as kimg
    os.utime(run.checkpoint(12.0), (1.0, 1.0))
    (run.checkpoints / ".ckpt-x1y2.tmp").write_bytes(b"")  # save_atomic's temp file, mid-write
    (run.checkpoints / "ckpt-latest.pt").write_bytes(b"")
    earlier = run.next_superseded()  # an earlier run, set aside further along: not this run's progress
    earlier.checkpoints.mkdir(parents=True)
    earlier.checkpoint(50.0).write_bytes(b"x")
    return run


def test_the_newest_checkpoint_is_the_one_with_the_most_kimg(tmp_path):
    run = RunDir(tmp_path / "new")
    assert run.newest_checkpoint() is None  # no run folder yet
    run.checkpoints.mkdir(parents=True)
    assert run.newest_checkpoint() is None  # an empty one
    (run.checkpoints / ".ckpt-x1y2.tmp").write_bytes(b"")
    assert run.newest_checkpoint() is None  # only a checkpoint being written
    run = _tricky_run(tmp_path)
    assert run.newest_checkpoint() == (12.0, run.checkpoint(12.0))
    assert run.newest_checkpoint() == run.checkpoint_files()[-1]


def test_training_the_manager_and_status_agree_on_the_newest_checkpoint(tmp_path):
    """The three readers of a run's progress (where training resumes, what the manager records, what `ganflow
    train status` shows) all take RunDir.newest_checkpoint's answer."""
    from flows.queue_cli import status_table
    from tasks.manager.actions import _record_progress
    from tasks.manager.queue import Queue
    from tasks.training.stages import done_kimg

    run = _tricky_run(tmp_path)
    assert done_kimg(run.path) == 12.0 and done_kimg(tmp_path / "nothing") == 0.0
    q = Queue(tmp_path / "q.sqlite")
    req = q.submit(dict(data="/d", run_dir=str(run.path), arch="stylegan2", resolution=32, kimg=20.0, seed=0))
    _, row = status_table([q.get(req.id)], 3).splitlines()  # queued: read from the run dir only
    assert row.split()[:6] == [req.id, "queued", "12", "/", "20", "0/3"] and run.checkpoint(12.0).name in row
    assert q.claim(req.id, "queued", 0, start_kimg=12.0) == 1
    _record_progress(q, q.get(req.id), None)  # no Prefect run seen yet: the run dir's newest checkpoint
    assert (q.get(req.id).kimg_done, q.get(req.id).last_checkpoint) == (12.0, str(run.checkpoint(12.0)))


def test_a_snapshot_knows_its_run_folder_and_set_aside_slots_count_up(tmp_path):
    run = RunDir(tmp_path / "run")
    assert RunDir.of_snapshot(run.checkpoint(4.0)) == run
    assert RunDir.of_snapshot(run.best) == run
    assert RunDir.of_snapshot(tmp_path / "elsewhere" / "net.pt") == RunDir(tmp_path / "elsewhere")
    first = run.next_superseded()
    assert first == RunDir(tmp_path / "run" / "superseded" / "1")
    first.path.mkdir(parents=True)
    assert run.next_superseded().path == tmp_path / "run" / "superseded" / "2"
    assert first.checkpoints == tmp_path / "run" / "superseded" / "1" / "checkpoints"  # itself run-shaped


def test_dvc_yaml_declares_the_layout_s_files():
    """dvc.yaml's train and evaluate stages track exactly what RunDir names (and its metrics/plots block)."""
    doc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    run = RunDir("runs/pipeline")

    def outs(stage: str) -> set[str]:
        return {next(iter(o)) if isinstance(o, dict) else o for o in doc["stages"][stage]["outs"]}

    assert outs("train") == {str(run.checkpoints), str(run.samples)}
    assert outs("evaluate") == {str(run.best), str(run.metrics), str(run.fid_csv)}
    assert str(run.metrics) in doc["metrics"] and doc["artifacts"]["model"]["path"] == str(run.best)
    assert str(run.fid_csv) in {next(iter(p)) if isinstance(p, dict) else p for p in doc["plots"]}


def test_training_writes_where_the_layout_says(tmp_path, one_torch_thread):
    """A real (tiny) run: every file the trainer writes is one RunDir names, and models.checkpoint lists them."""
    from models.checkpoint import list_checkpoints
    from tasks.training.run import run_training
    from tests.test_training_runs import CFG
    from tests.conftest import write_curated

    data = write_curated(tmp_path / "data", n=8, side=16)
    run = RunDir(tmp_path / "run")
    run_training(CFG, data, run.path, 0.008)
    assert sorted(p.relative_to(run.path).as_posix() for p in run.path.rglob("*") if p.is_file()) == [
        "checkpoints/ckpt-000000.004.pt", "checkpoints/ckpt-000000.008.pt", "lease/00000001.json",
        "samples/fakes-000000.004.png", "samples/fakes-000000.008.png"]
    assert list_checkpoints(run.path) == run.checkpoint_files() == [(0.004, run.checkpoint(0.004)),
                                                                    (0.008, run.checkpoint(0.008))]
    assert run.newest_sample_grid() == run.sample_grid(0.008)
