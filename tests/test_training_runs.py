"""A run directory belongs to one run: resuming needs the same settings and data; `restart_on_change`
sets another run's checkpoints aside (what the DVC train stage does) instead of continuing on other data."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from models.checkpoint import list_checkpoints, load_checkpoint
from models.trainer import TrainConfig
from tasks.training.run import config_changes, run_training
from tests.conftest import write_curated

CFG = TrainConfig(arch="stylegan2", resolution=16, batch=4, snapshot_kimg=0.004, seed=0,
                  net=dict(channel_base=256, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2))


@pytest.fixture
def data(tmp_path):
    folder = write_curated(tmp_path / "data", n=8, side=16)
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "content_hash": "a" * 64}))
    return folder


def _rehash(folder, digest: str) -> None:
    meta = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**meta, "content_hash": digest}))


def test_checkpoints_record_the_dataset_and_a_run_resumes_with_the_same_data(data, tmp_path, one_torch_thread):
    run = tmp_path / "run"
    run_training(CFG, data, run, 0.004)
    assert load_checkpoint(list_checkpoints(run)[-1][1])["config"]["dataset"] == "a" * 64
    again = run_training(replace(CFG, snapshot_kimg=0.008), data, run, 0.008)  # the interval may change
    assert again.resumed_from and again.set_aside is None


def test_other_data_is_refused_or_set_aside(data, tmp_path, one_torch_thread):
    run = tmp_path / "run"
    run_training(CFG, data, run, 0.004)
    first = {p.name: p.read_bytes() for _, p in list_checkpoints(run)}
    _rehash(data, "b" * 64)
    with pytest.raises(ValueError, match=r"another run \(dataset differ"):
        run_training(CFG, data, run, 0.004)
    assert {p.name: p.read_bytes() for _, p in list_checkpoints(run)} == first  # refusing changed nothing

    result = run_training(CFG, data, run, 0.004, restart_on_change=True)
    assert result.resumed_from is None and result.set_aside == str(run / "superseded" / "1")
    kept = run / "superseded" / "1" / "checkpoints"
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == first  # the old run is moved, not lost
    assert load_checkpoint(list_checkpoints(run)[-1][1])["config"]["dataset"] == "b" * 64


def test_config_changes_names_what_differs():
    saved = json.loads(json.dumps(vars(replace(CFG, dataset="x")) | {"betas": [0.0, 0.99]}))
    assert config_changes(saved, replace(CFG, dataset="x")) == []
    assert config_changes(saved, replace(CFG, dataset="x", snapshot_kimg=1.0)) == []
    assert config_changes(saved, replace(CFG, dataset="y", batch=8)) == ["batch", "dataset"]
