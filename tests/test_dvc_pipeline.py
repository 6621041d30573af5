"""The DVC pipeline (dvc.yaml) as a data engineer runs it: real git, real `dvc`, the real `ganflow` stages.

Each project here is made like a fresh clone (the project's git files, one commit) with tiny params, so
the whole ingest → curate → train → evaluate pipeline runs in about a minute on CPU.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.golden import check_golden
from tests.moto_s3 import BUCKET, moto_s3

BIN = Path(sys.executable).parent
STAGES = ("ingest", "curate", "train", "evaluate")
OUTS = ("data/raw/pipeline", "data/curated/pipeline", "runs/pipeline/checkpoints", "runs/pipeline/samples",
        "runs/pipeline/best.pt")
TINY = {
    "curate": {"resolution": 32, "matte": "none", "workers": 1},
    "train": {"resolution": 16, "kimg": 0.02, "snapshot_kimg": 0.01, "batch": 4, "channel_base": 256,
              "channel_max": 32, "net": {"z_dim": 32, "w_dim": 32}, "device": "cpu"},
    "evaluate": {"inception_weights": "random", "n_fake": 8, "kid": False, "batch": 8,
                 "metrics": ["fid", "fd_dinov2"], "dinov2_weights": "random"},
}


@pytest.fixture(scope="module")
def env(prefect_api, tmp_path_factory):
    """The user's shell: the venv's `ganflow` and `dvc` on PATH, the test Prefect server, no weights file."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_LOGGING_LEVEL": "WARNING", "HOME": str(home), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    env.pop("GANFLOW_INCEPTION_WEIGHTS", None)
    return env


@pytest.fixture(scope="module")
def s3(env):
    """The user's shell with moto's S3 server on localhost as the object store (AWS_ENDPOINT_URL and a key)."""
    with moto_s3() as s3env:
        yield {**env, **s3env}


def sh(env: dict, cwd: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def sh_json(env: dict, cwd: Path, *cmd: str):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout)


def make_project(env: dict, dest: Path, **changes: dict) -> Path:
    """A fresh clone: the project's files as git has them (tracked and new, not ignored), tiny params, a commit."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        # No local results; data/pretrained/ (its README: the train stage's dependency) is part of a clone.
        if src.is_file() and rel != "dvc.lock" and (not rel.startswith(("data/", "runs/"))
                                                    or rel.startswith("data/pretrained/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in {**TINY, **changes}.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(env, dest, "git", "init", "-q")
    sh(env, dest, "git", "add", "-A")
    sh(env, dest, "git", "commit", "-qm", "fresh clone")
    return dest


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def ran(output: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in output}


def file_hashes(root: Path, paths=OUTS) -> dict[str, str]:
    found = {}
    for rel in paths:
        p = root / rel
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                found[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def find_named(tree, name: str):
    """The experiment revision named `name` (a dict with its "data") in `dvc exp show --json`'s nesting."""
    if isinstance(tree, dict):
        if tree.get("name") == name and "data" in tree:
            return tree
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            if (found := find_named(item, name)) is not None:
                return found
    return None


def set_params(project: Path, section: str, **values) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def import_log(tmp_path_factory) -> Path:
    """Where the first repro's stage commands record the project modules they import (tests/import_log)."""
    return tmp_path_factory.mktemp("imports")


@pytest.fixture(scope="module")
def repro(env, import_log, tmp_path_factory):
    """A fresh project after its first `dvc repro`: (path, the command's output)."""
    project = make_project(env, tmp_path_factory.mktemp("clone-a"))
    hook = [str(ROOT / "tests" / "import_log"), env.get("PYTHONPATH", "")]
    logged = {**env, "GANFLOW_IMPORT_LOG": str(import_log), "PYTHONPATH": os.pathsep.join(filter(None, hook))}
    return project, sh(logged, project, "dvc", "repro")


def test_repro_runs_every_stage_and_records_metrics_and_plots(repro, env):
    from models.generate import load_generator

    project, out = repro
    assert ran(out) == set(STAGES)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    dataset = json.loads((project / "data/curated/pipeline/dataset.json").read_text())
    provenance = (project / "data/raw/pipeline/provenance.jsonl").read_text().splitlines()
    assert dataset["inputs"] == len(provenance) and dataset["count"] == dataset["reasons"]["accepted"] > 0
    assert len(list((project / "runs/pipeline/checkpoints").glob("ckpt-*.pt"))) == 2
    G, arch = load_generator(project / "runs/pipeline/best.pt")
    assert arch["net"]["resolution"] == 16
    shown = json.dumps(sh_json(env, project, "dvc", "metrics", "show", "--json"))
    assert '"fid"' in shown and '"best"' in shown, shown
    assert all(f'"{key}"' in shown for key in ("fd_dinov2", "precision", "recall", "memorized")), shown
    assert "not comparable" in (project / "runs/pipeline/metrics.json").read_text()  # random extractor, said so
    rows = (project / "runs/pipeline/fid.csv").read_text().splitlines()
    assert rows[0].startswith("kimg,fid") and len(rows) == 3
    assert all(column in rows[0].split(",") for column in ("fd_dinov2", "precision", "recall", "memorized"))
    plots = json.dumps(sh_json(env, project, "dvc", "plots", "show", "--json"))
    assert "fid.csv" in plots
    assert sh(env, project, "dvc", "status").strip().endswith("Data and pipelines are up to date.")


def test_second_repro_does_nothing(repro, env):
    project, _ = repro
    lock, outs = (project / "dvc.lock").read_bytes(), file_hashes(project)
    mtimes = {rel: (project / rel).stat().st_mtime_ns for rel in outs}
    out = sh(env, project, "dvc", "repro")
    assert ran(out) == set() and "Data and pipelines are up to date." in out
    assert (project / "dvc.lock").read_bytes() == lock
    assert {rel: (project / rel).stat().st_mtime_ns for rel in outs} == mtimes


def test_filter_threshold_change_reruns_from_curate_on(repro, env, tmp_path):
    project = copy_project(repro[0], tmp_path / "b")
    before = json.loads((project / "data/curated/pipeline/dataset.json").read_text())
    old_ckpts = file_hashes(project, ["runs/pipeline/checkpoints"])
    old_run = json.loads((project / "runs/pipeline/metrics.json").read_text())["evaluated_with"]["run"]
    set_params(project, "curate", blur_min_var=400.0)  # a stricter blur threshold rejects more images

    out = sh(env, project, "dvc", "repro")
    assert ran(out) == {"curate", "train", "evaluate"}, out
    after = json.loads((project / "data/curated/pipeline/dataset.json").read_text())
    assert after["reasons"]["blurry"] > before["reasons"]["blurry"] and after["count"] < before["count"]
    assert after["inputs"] == before["inputs"]  # every input still accounted for
    # Trained afresh on the new data (not resumed from the old run), and the old run is kept, not deleted.
    assert file_hashes(project, ["runs/pipeline/checkpoints"]).keys() != set() and \
        set(file_hashes(project, ["runs/pipeline/checkpoints"]).values()).isdisjoint(old_ckpts.values())
    assert sorted(p.name for p in (project / "runs/pipeline/superseded/1/checkpoints").iterdir()) == \
        sorted(Path(k).name for k in old_ckpts)
    metrics = json.loads((project / "runs/pipeline/metrics.json").read_text())
    assert metrics["evaluated_with"]["run"] != old_run and metrics["snapshots"] == 2  # old FIDs voided


def test_push_then_pull_restores_identical_files(repro, s3, tmp_path):
    """Through an S3 remote (moto): what a worker that shares no disk gets back, and its repro then does nothing."""
    project = copy_project(repro[0], tmp_path / "c")
    lock = (project / "dvc.lock").read_bytes()
    sh(s3, project, "dvc", "remote", "add", "--local", "-d", "-f", "scratch", f"s3://{BUCKET}/push-pull")
    sh(s3, project, "dvc", "push")
    before = file_hashes(project)
    shutil.rmtree(project / ".dvc" / "cache")
    for rel in OUTS:
        p = project / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    sh(s3, project, "dvc", "pull")
    assert file_hashes(project) == before
    assert sh(s3, project, "dvc", "status").strip().endswith("Data and pipelines are up to date.")
    out = sh(s3, project, "dvc", "repro")
    assert ran(out) == set() and (project / "dvc.lock").read_bytes() == lock


def test_exp_run_with_a_changed_param_resumes_training(repro, env, tmp_path):
    project = copy_project(repro[0], tmp_path / "d")
    old = file_hashes(project, ["runs/pipeline/checkpoints"])
    out = sh(env, project, "dvc", "exp", "run", "-S", "train.kimg=0.03", "-n", "longer")
    assert ran(out) == {"train", "evaluate"}, out
    now = file_hashes(project, ["runs/pipeline/checkpoints"])
    assert len(now) == len(old) + 1 and all(now[k] == v for k, v in old.items())  # persisted, resumed
    exp = find_named(sh_json(env, project, "dvc", "exp", "show", "--json"), "longer")
    assert exp is not None and exp["data"]["params"]["params.yaml"]["data"]["train"]["kimg"] == 0.03


def test_two_fresh_clones_give_byte_identical_dvc_lock(repro, s3, tmp_path):
    """The second clone's default remote is S3 (as a team's .dvc/config names it): a remote changes nothing that
    `dvc repro` records, and after a push the next repro is the same no-op (bench/dvc_noop.py times it)."""
    other = make_project(s3, tmp_path / "clone-b")
    sh(s3, other, "dvc", "remote", "add", "-d", "-f", "team", f"s3://{BUCKET}/fresh-clone")
    sh(s3, other, "dvc", "repro")
    assert (other / "dvc.lock").read_bytes() == (repro[0] / "dvc.lock").read_bytes()
    sh(s3, other, "dvc", "push")
    out = sh(s3, other, "dvc", "repro")
    assert ran(out) == set() and "Data and pipelines are up to date." in out
    assert (other / "dvc.lock").read_bytes() == (repro[0] / "dvc.lock").read_bytes()
    assert "are in sync" in sh(s3, other, "dvc", "status", "--cloud")  # every out is on S3


def test_ingest_and_curate_outs_are_the_recorded_ones(repro):
    """A fresh clone's `dvc repro` records the golden ingest and curate outs for these params (issue 16: a
    refactor leaves them unchanged). Train and evaluate outs are floats from CPU kernels: not pinned here."""
    lock = yaml.safe_load((repro[0] / "dvc.lock").read_text())
    outs = {f"{stage} {o['path']}": {k: o[k] for k in ("md5", "size", "nfiles") if k in o}
            for stage in ("ingest", "curate") for o in lock["stages"][stage]["outs"]}
    check_golden("dvc_lock_outs", outs)


def test_every_stage_depends_on_every_project_module_its_command_imports(repro, import_log):
    """Each project module that a stage's command imported during `dvc repro` (in any of its processes) is a dep of
    that stage, a listed file or under a listed folder: otherwise a change to it leaves the stage "up to date"."""
    project = repro[0]
    uncovered = {}
    for name, stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].items():
        modules = set((import_log / f"{name}.txt").read_text().split())
        assert "flows.cli" in modules, name  # the record works: every stage runs `ganflow`
        specs = [importlib.util.find_spec(m) for m in sorted(modules)]
        files = {str(Path(s.origin).resolve().relative_to(ROOT)) for s in specs if s is not None and s.has_location}
        deps = [d.rstrip("/") for d in stage["deps"]]
        missing = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in deps))
        if missing:
            uncovered[name] = missing
    assert uncovered == {}


def test_datasets_lists_the_pipelines_dataset_once_dvc_lock_is_committed(repro, env, tmp_path):
    project = copy_project(repro[0], tmp_path / "e")
    sh(env, project, "git", "add", "dvc.lock", "runs/pipeline/metrics.json", "runs/pipeline/fid.csv")
    sh(env, project, "git", "commit", "-qm", "dvc repro")
    rows = sh_json(env, project, "ganflow", "datasets", "--json")
    dataset = json.loads((project / "data/curated/pipeline/dataset.json").read_text())
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    [row] = [r for r in rows if r["dataset"] == "data/curated/pipeline"]
    assert row["md5"] == lock["stages"]["curate"]["outs"][0]["md5"]
    assert row["count"] == dataset["count"] and row["reasons"] == dataset["reasons"]
