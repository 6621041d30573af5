"""Dataset versioning with real git and real DVC, in a temporary repo made with the project's .gitignore and
.dvc/config (its default remote overridden by a temp folder in .dvc/config.local; HOME is a temp folder too,
so nothing reaches the real default remote)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.curation.publish import Record, write_dataset
from tasks.versioning.record import VersioningError, dvc_writer, version_dataset
from tests.conftest import ROOT

DVC = str(Path(sys.executable).with_name("dvc"))


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


def make_dataset(folder: Path, accepted: int, rejected: dict[str, int], seed: int = 0) -> dict:
    """A curated dataset as the curate flow writes it: real PNGs in a tar shard, manifest, dataset.json."""
    rng = np.random.default_rng(seed)
    pngs, records = {}, []
    scratch = folder.parent / f".pngs-{folder.name}-{seed}"
    scratch.mkdir(parents=True, exist_ok=True)
    for i in range(accepted):
        rid = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()
        pngs[rid] = scratch / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(pngs[rid])
        records.append(Record(rid, "folder", f"img{i}.jpg", "accepted", None))
    for reason, n in rejected.items():
        for i in range(n):
            rid = hashlib.sha256(f"{seed}-{reason}-{i}".encode()).hexdigest()
            records.append(Record(rid, "folder", f"{reason}{i}.jpg", "rejected", reason))
    info = write_dataset(folder, records, pngs, resolution=16, shard_size=4)
    shutil.rmtree(scratch)
    return info


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A git + DVC repo with the project's .gitignore and .dvc/config; the remote is tmp_path/remote."""
    from dvc.repo import Repo

    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # `~` in the default remote's URL lands here
    monkeypatch.delenv("DVC_STAGE", raising=False)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "test@example.com")
    git(root, "config", "user.name", "test")
    Repo.init(str(root)).close()
    shutil.copy(ROOT / ".gitignore", root / ".gitignore")
    shutil.copy(ROOT / ".dvc" / "config", root / ".dvc" / "config")
    with Repo(str(root)) as repo, repo.config.edit("local") as conf:  # = dvc remote add -d --local test DIR
        conf["remote"]["test"] = {"url": str(tmp_path / "remote")}
        conf["core"]["remote"] = "test"
    git(root, "add", ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
    git(root, "commit", "-q", "-m", "init")
    return root


def dvc_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, *args], cwd=root, capture_output=True, text=True, check=True)


def test_version_dataset_adds_pushes_and_commits_only_its_files(project, tmp_path):
    info = make_dataset(project / "data/curated/cats", 6, {"blurry": 2, "text": 1})
    (project / "notes.txt").write_text("a user's own work in progress\n")
    git(project, "add", "notes.txt")

    out = version_dataset("data/curated/cats", repo_root=project)

    tracked = (project / "data/curated/cats.dvc").read_text()
    assert out["md5"].endswith(".dir") and f"md5: {out['md5']}" in tracked
    assert out["pushed"] and out["committed"] and out["stage"] is None
    assert out["git_rev"] == git(project, "rev-parse", "HEAD").strip()
    assert (out["count"], out["inputs"], out["reasons"]) == (6, 9, info["reasons"])
    assert git(project, "show", "--name-only", "--format=", "HEAD").split() == ["data/curated/cats.dvc"]
    subject = git(project, "log", "-1", "--format=%s")
    assert "data/curated/cats" in subject and out["md5"] in subject
    # the user's staged file is still staged, not swept into the commit; the dataset itself stays out of git
    assert git(project, "status", "--porcelain").splitlines() == ["A  notes.txt"]
    md5 = out["md5"].removesuffix(".dir")
    assert (tmp_path / "remote/files/md5" / md5[:2] / (md5[2:] + ".dir")).is_file()
    assert not (tmp_path / "home").exists()  # the project's default remote was not used

    again = version_dataset("data/curated/cats", repo_root=project)  # nothing changed: no new commit
    assert (again["md5"], again["git_rev"], again["committed"]) == (out["md5"], out["git_rev"], False)


def test_second_version_has_a_new_hash_and_datasets_lists_both(project, capsys):
    from flows.cli import main

    folder = project / "data/curated/cats"
    make_dataset(folder, 6, {"blurry": 2})
    first = version_dataset(folder, repo_root=project)
    make_dataset(folder, 8, {"blurry": 1, "face": 3}, seed=1)
    second = version_dataset(folder, repo_root=project)
    assert second["md5"] != first["md5"] and second["git_rev"] != first["git_rev"]

    assert main(["datasets", "--repo", str(project), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["rev"], r["dataset"], r["md5"], r["count"], r["inputs"], r["reasons"]) for r in rows] == [
        (first["git_rev"], "data/curated/cats", first["md5"], 6, 8, {"accepted": 6, "blurry": 2}),
        (second["git_rev"], "data/curated/cats", second["md5"], 8, 12, {"accepted": 8, "face": 3, "blurry": 1}),
    ]
    assert main(["datasets", "--repo", str(project)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rev", "date", "dataset"]
    assert first["git_rev"][:8] in table[1] and "6/8" in table[1] and "blurry=2" in table[1]
    assert "8/12" in table[2] and "face=3 blurry=1" in table[2]

    # Past versions' dataset.json come from the remote when the local cache no longer has them.
    shutil.rmtree(project / ".dvc/cache")
    assert main(["datasets", "--repo", str(project), "--json", "./data/curated/cats/"]) == 0
    assert [r["count"] for r in json.loads(capsys.readouterr().out)] == [6, 8]


@pytest.mark.parametrize("outs", [["data/curated/pipeline"],
                                  [f"data/curated/pipeline/{f}" for f in ("manifest.jsonl", "dataset.json", "shards")]],
                         ids=["folder-out", "file-outs"])
def test_a_stage_out_is_committed_with_dvc_commit_not_added(project, capsys, outs):
    from flows.cli import main

    (project / "dvc.yaml").write_text("stages:\n  curate:\n    cmd: ganflow curate --demo --out data/curated/pipeline\n"
                                      "    outs:\n" + "".join(f"      - {o}\n" for o in outs))
    git(project, "add", "dvc.yaml")
    git(project, "commit", "-q", "-m", "pipeline")
    make_dataset(project / "data/curated/pipeline", 5, {"grayscale": 2})

    out = version_dataset("data/curated/pipeline", repo_root=project)

    assert out["stage"] == "curate" and not (project / "data/curated/pipeline.dvc").exists()
    assert git(project, "show", "--name-only", "--format=", "HEAD").split() == ["dvc.lock"]
    assert f"md5: {out['md5']}" in (project / "dvc.lock").read_text()
    assert out["md5"].endswith(".dir") == (len(outs) == 1)  # file outs: the hash of the dataset.json out
    assert main(["datasets", "--repo", str(project), "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["dataset"], row["source"], row["md5"], row["count"], row["reasons"]) == (
        "data/curated/pipeline", "dvc.lock:curate", out["md5"], 5, {"accepted": 5, "grayscale": 2})


_VERSION_ONE = """
import json, sys
from tasks.versioning.record import version_dataset
print("ready", flush=True)
print(json.dumps(version_dataset(sys.argv[1], repo_root=sys.argv[2])))
"""


def test_two_version_dataset_calls_at_once_both_succeed(project):
    """Two processes version two datasets at the same moment: both wait on the writer lock this test holds
    until both are ready, then both run; each dataset is added, pushed and committed."""
    names = ("cats", "dogs")
    for i, name in enumerate(names):
        make_dataset(project / "data/curated" / name, 4 + i, {"text": 1 + i}, seed=i)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with dvc_writer(project, timeout=0):
        procs = [subprocess.Popen([sys.executable, "-c", _VERSION_ONE, f"data/curated/{name}", str(project)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for name in names]
        assert [p.stdout.readline() for p in procs] == ["ready\n", "ready\n"]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        results.append(json.loads(stdout.splitlines()[-1]))
    assert all(r["committed"] and r["pushed"] for r in results)
    assert len({r["git_rev"] for r in results}) == 2
    log = git(project, "log", "--format=%H", "--name-only", "-2")
    for name, r in zip(names, results):
        assert r["git_rev"] in log and f"data/curated/{name}.dvc" in log
    assert git(project, "status", "--porcelain") == ""


def test_waits_for_dvc_repo_lock_held_by_another_process(project):
    """A user's `dvc` command holds DVC's repo lock: version_dataset waits (past DVC's own 3 s) for it."""
    from dvc.lock import make_lock

    make_dataset(project / "data/curated/cats", 4, {})
    foreign = make_lock(str(project / ".dvc/tmp/lock"))
    foreign.lock()
    with pytest.raises(VersioningError, match="DVC's repo lock"):
        version_dataset("data/curated/cats", repo_root=project, lock_timeout=0)
    release = threading.Timer(4.0, foreign.unlock)
    release.start()
    try:
        out = version_dataset("data/curated/cats", repo_root=project)
    finally:
        release.join()
    assert out["committed"]


def test_writer_lock_is_exclusive_across_open_files(project):
    with dvc_writer(project, timeout=5):
        with pytest.raises(VersioningError, match="another ganflow DVC writer"):
            with dvc_writer(project, timeout=0):
                pass
    with dvc_writer(project, timeout=0):  # released
        pass


def test_push_then_pull_restores_identical_files(project):
    folder = project / "data/curated/cats"
    make_dataset(folder, 9, {"duplicate": 2})
    version_dataset(folder, repo_root=project, push=False)
    before = file_hashes(folder)
    dvc_cli(project, "push")
    shutil.rmtree(project / ".dvc/cache")
    shutil.rmtree(folder)
    dvc_cli(project, "pull")  # no target: DVC must find data/curated/cats.dvc through the .gitignore rules
    assert file_hashes(folder) == before


def test_gitignore_keeps_datasets_out_of_git_and_dvc_files_in(project):
    make_dataset(project / "data/curated/demo", 3, {"blurry": 1})  # what `make demo` writes: no DVC file yet
    assert git(project, "status", "--porcelain", "--untracked-files=all") == ""  # the project's .gitignore alone
    (project / "data/curated/demo.dvc").write_text("outs: []\n")
    (project / "data/curated/.gitignore").write_text("/demo\n")  # what `dvc add` writes beside it
    assert sorted(git(project, "status", "--porcelain", "--untracked-files=all").split()[1::2]) == [
        "data/curated/.gitignore", "data/curated/demo.dvc"]


def test_not_a_repo_is_a_clear_error(tmp_path, capsys):
    from flows.cli import main

    make_dataset(tmp_path / "plain/data/curated/cats", 2, {})
    with pytest.raises(VersioningError, match="not inside a git repository"):
        version_dataset("data/curated/cats", repo_root=tmp_path / "plain")
    git(tmp_path / "plain", "init", "-q")
    with pytest.raises(VersioningError, match=r"not a DVC project.*dvc init"):
        version_dataset("data/curated/cats", repo_root=tmp_path / "plain")
    assert main(["datasets", "--repo", str(tmp_path / "plain")]) == 2
    assert "not a DVC project" in capsys.readouterr().err


def test_a_folder_without_dataset_json_is_refused(project):
    (project / "data/curated/empty").mkdir(parents=True)
    with pytest.raises(VersioningError, match="not a curated dataset"):
        version_dataset("data/curated/empty", repo_root=project)


def test_task_records_the_dataset_hash_in_a_flow_artifact(prefect_api, project):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.versioning.record import version_dataset_task

    make_dataset(project / "data/curated/Cats 2", 3, {"blurry": 1})

    @flow
    def curate_and_version() -> dict:
        return version_dataset_task("data/curated/Cats 2", repo_root=str(project))

    out = curate_and_version()
    with get_client(sync_client=True) as client:
        [artifact] = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dataset-cats-2"])))
    rows = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    assert rows == [{"dataset": "data/curated/Cats 2", "dvc_md5": out["md5"], "git_rev": out["git_rev"][:12],
                     "pushed": True, "inputs": 4, "accepted": 3, "blurry": 1}]


def test_curate_flow_with_version_records_the_dataset_in_dvc_and_git(project, prefect_api, tmp_path):
    """What the curate deployment (version: true) does for a dataset built from the UI."""
    from flows.curate import curate
    from tasks.versioning.history import dataset_versions

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # noise photos: sharp and colourful, so they are accepted
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = project / "data" / "curated" / "photos"
    result = curate(source="path", input_path=str(photos), out=str(out), raw_root=str(tmp_path / "raw"),
                    cache_dir=str(tmp_path / "cache"), settings={"resolution": 32, "matte": "none"}, version=True)
    v = result["version"]
    assert v["path"] == "data/curated/photos" and v["md5"].endswith(".dir") and v["pushed"]
    assert git(project, "log", "-1", "--format=%H").strip() == v["git_rev"]
    assert "data/curated/photos.dvc" in git(project, "show", "--name-only", "--format=", v["git_rev"])
    [row] = dataset_versions(project)
    assert row["md5"] == v["md5"] and row["count"] == result["count"] == 4
