"""A train run on a machine without its dataset (tasks/versioning/fetch_dataset.py): DVC fetches it from the
project's S3 remote (moto's S3 server on localhost, a real HTTP S3 API), checked against the content hash the run
recorded, before training. Real git, real DVC, real `ganflow train`; machine B is a `git clone` of machine A that
shares nothing with it but the S3 endpoint (its own DVC cache, its own HOME, no dataset folder)."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

from tasks.versioning.fetch_dataset import DatasetDownloadError, ensure_dataset
from tasks.versioning.history import VersioningError
from tasks.versioning.record import version_dataset
from tests.conftest import PARAMS, SMALL_NET
from tests.moto_s3 import BUCKET, moto_s3
from tests.test_versioning import file_hashes, git, make_dataset, project  # noqa: F401  (project: a fixture)

CATS = "data/curated/cats"


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as env:
        yield env


@pytest.fixture
def machine_a(project, s3, monkeypatch, tmp_path):  # noqa: F811
    """Machine A: the project with its default DVC remote on S3, committed in .dvc/config (as a team sets it up);
    the endpoint and the key come from the environment, as on a user's machine."""
    from dvc.repo import Repo

    for k, v in s3.items():
        monkeypatch.setenv(k, v)
    with Repo(str(project)) as repo:
        with repo.config.edit("local") as conf:  # the project fixture's local remote: gone, S3 is the default
            conf["core"].pop("remote", None)
            conf["remote"].pop("test", None)
        with repo.config.edit("repo") as conf:   # = dvc remote add -d team s3://... ; git commit .dvc/config
            conf["remote"]["team"] = {"url": f"s3://{BUCKET}/{tmp_path.name}"}
            conf["core"]["remote"] = "team"
    git(project, "commit", "-q", "-m", "DVC remote: team storage", ".dvc/config")
    return project


def clone(a, dest):
    """Machine B: a clone of A's git repo (the .dvc files and the remote's name, no data, no cache)."""
    git(a, "clone", "-q", str(a), str(dest))
    return dest


def tiny_params(folder, kimg: float):
    params = yaml.safe_load(PARAMS.read_text())
    params["train"].update(resolution=16, kimg=kimg, snapshot_kimg=0.004, batch=4, ada_target=0.0, device="cpu",
                           channel_base=SMALL_NET["channel_base"], channel_max=SMALL_NET["channel_max"],
                           net={k: SMALL_NET[k] for k in ("z_dim", "w_dim", "mapping_layers")})
    path = folder / "params-tiny.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def ganflow_train(cwd, *args: str) -> int:
    from flows.cli import main

    here = os.getcwd()
    os.chdir(cwd)  # relative --data, as a worker's run has it in its clone
    try:
        return main(["train", *args])
    finally:
        os.chdir(here)


def test_train_on_a_machine_without_the_data_pulls_it_from_s3_checked_against_the_runs_hash(
        machine_a, tmp_path, capsys, one_torch_thread):
    v1 = make_dataset(machine_a / CATS, 6, {"blurry": 1}, seed=1)
    version_dataset(CATS, repo_root=machine_a)  # dvc add, dvc push to S3, git commit of cats.dvc
    v1_rev = git(machine_a, "rev-parse", "HEAD").strip()
    v1_files = file_hashes(machine_a / CATS)
    run = tmp_path / "run"  # the run folder both machines see (how it travels is tasks/storage's business)

    # B has no dataset: `ganflow train` fetches it from S3 before training, and the run records its hash.
    b = clone(machine_a, tmp_path / "b")
    assert not (b / CATS).exists()
    assert ganflow_train(b, "--data", CATS, "--run-dir", str(run), "--params", str(tiny_params(tmp_path, 0.004))) == 0
    assert file_hashes(b / CATS) == v1_files
    from models.checkpoint import latest_checkpoint
    assert latest_checkpoint(run)[1]["config"]["dataset"] == v1["content_hash"]

    # A curates a second version and versions it; a fresh machine C checks out the newest commit (v2), but the run
    # was trained on v1: one line naming both and the commit that has v1; nothing checked out, nothing trained.
    shutil.rmtree(machine_a / CATS)
    v2 = make_dataset(machine_a / CATS, 7, {"text": 1}, seed=2)
    version_dataset(CATS, repo_root=machine_a)
    c = clone(machine_a, tmp_path / "c")
    capsys.readouterr()
    more = str(tiny_params(tmp_path, 0.008))
    # --restart-on-change (as dvc.yaml's train stage runs) would set the checkpoints aside for new data: never here.
    assert ganflow_train(c, "--data", CATS, "--run-dir", str(run), "--params", more, "--restart-on-change") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert v2["content_hash"][:12] in err and v1["content_hash"][:12] in err and v1_rev[:8] in err, err
    assert not (c / CATS).exists() and [k for k, _ in _ckpts(run)] == [0.004] and not (run / "superseded").exists()

    # Following the hint: that commit's .dvc file, then the same command fetches v1 and resumes the run.
    git(c, "checkout", v1_rev[:8], "--", f"{CATS}.dvc")
    assert ganflow_train(c, "--data", CATS, "--run-dir", str(run), "--params", more) == 0
    assert "resumed from" in capsys.readouterr().out
    assert file_hashes(c / CATS) == v1_files and [k for k, _ in _ckpts(run)] == [0.004, 0.008]


def _ckpts(run):
    from models.checkpoint import list_checkpoints
    return list_checkpoints(run)


def test_no_remote_is_one_line_and_a_remote_without_the_files_a_download_error(machine_a, tmp_path):
    info = make_dataset(machine_a / CATS, 4, {}, seed=3)
    version_dataset(CATS, repo_root=machine_a, push=False)  # committed, never pushed
    b = clone(machine_a, tmp_path / "b")
    with pytest.raises(DatasetDownloadError, match=r"could not download \S*data/curated/cats from remote 'team' "
                                                   rf"\(s3://{BUCKET}/.*not pushed there"):
        ensure_dataset(b / CATS, info["content_hash"])
    assert not (b / CATS / "dataset.json").exists()

    from dvc.repo import Repo
    with Repo(str(b)) as repo, repo.config.edit("repo") as conf:  # = a checkout with no default remote
        conf["core"].pop("remote")
    with pytest.raises(VersioningError, match="no default remote to fetch it from: `dvc remote add -d"):
        ensure_dataset(b / CATS, info["content_hash"])


def test_a_dataset_already_here_needs_no_dvc_and_must_be_the_runs(tmp_path):
    folder = tmp_path / "cats"  # not in any git or DVC project: nothing is fetched
    info = make_dataset(folder, 3, {}, seed=4)
    assert ensure_dataset(folder, info["content_hash"]) == folder
    assert ensure_dataset(folder, info["content_hash"][:12]) == folder  # the `dataset:` tag's 12 digits
    assert ensure_dataset(folder, None) == folder
    with pytest.raises(VersioningError, match=f"holds dataset {info['content_hash'][:12]}, not 0123456789ab"):
        ensure_dataset(folder, "0123456789ab" * 5)
    with pytest.raises(VersioningError, match="DVC cannot fetch it: .* not inside a git repository"):
        ensure_dataset(tmp_path / "absent", None)
