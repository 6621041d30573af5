"""A no-op `dvc repro` of the pipeline: what a data engineer waits for when nothing changed. Target <= 3 s.

Builds a fresh project (the repo's git files, one commit) with the embedded demo data at the default
curation settings (rembg/GrabCut off, to keep the set-up short) and a tiny CPU training run, reproduces it
once, then times `dvc repro` with nothing to do, next to two references measured in the same run:
- `dvc version`: a dvc command that reads no pipeline (start-up, plugin and filesystem discovery);
- `dvc status`: the same hashing of deps and outs without the run decision.
Then the same no-op with the project's default remote on S3 (moto's S3 server on localhost, after a `dvc push`),
as a team's checkout has it: a remote must not slow a repro that has nothing to do (`repro_s3_remote`).
The ratios compare across machines; the absolute seconds are what the target is about.

Usage: python bench/dvc_noop.py [--runs 5] [--out bench/results/dvc_noop.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 3.0
TINY = {
    "curate": {"matte": "none"},
    "train": {"resolution": 16, "kimg": 0.02, "snapshot_kimg": 0.01, "batch": 4, "channel_base": 256,
              "channel_max": 32, "net": {"z_dim": 32, "w_dim": 32}, "device": "cpu"},
    "evaluate": {"inception_weights": "random", "n_fake": 8, "kid": False, "batch": 8},
}


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t0


def make_project(dest: Path, env: dict) -> Path:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        # data/pretrained/ (its README) is part of a clone: the train stage depends on the folder.
        if (ROOT / rel).is_file() and rel != "dvc.lock" and (not rel.startswith(("data/", "runs/"))
                                                             or rel.startswith("data/pretrained/")):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True)
    return dest


def s3_remote_noop(project: Path, env: dict, runs: int) -> list[float]:
    """No-op repro times with the default remote on moto's S3 server (a dev dependency) after a push."""
    sys.path.insert(0, str(ROOT))
    from tests.moto_s3 import BUCKET, moto_s3

    with moto_s3() as s3:
        s3env = {**env, **s3}
        subprocess.run(["dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/bench"], cwd=project, env=s3env,
                       check=True, capture_output=True)
        run(["dvc", "push"], project, s3env)
        return [run(["dvc", "repro"], project, s3env) for _ in range(runs)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "dvc_noop.json"))
    a = ap.parse_args()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PREFECT_LOGGING_LEVEL": "WARNING",
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@localhost"}
    with tempfile.TemporaryDirectory(prefix="ganflow-dvc-bench-") as tmp:
        project = make_project(Path(tmp), env)
        setup = run(["dvc", "repro"], project, env)
        times = {name: [run(cmd, project, env) for _ in range(a.runs)]
                 for name, cmd in (("repro", ["dvc", "repro"]), ("status", ["dvc", "status"]),
                                   ("version", ["dvc", "version"]))}
        files = sum(1 for _ in (project / "data").rglob("*")) + sum(1 for _ in (project / "runs").rglob("*"))
        lock = (project / "dvc.lock").read_bytes()
        times["repro_s3_remote"] = s3_remote_noop(project, env, a.runs)
        same_lock = (project / "dvc.lock").read_bytes() == lock
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "noop_repro_s": round(median["repro"], 3),
        "target_s": TARGET_S,
        "meets_target": median["repro"] <= TARGET_S,
        "ratio_to_dvc_version": round(median["repro"] / median["version"], 3),
        "ratio_to_dvc_status": round(median["repro"] / median["status"], 3),
        "dvc_version_s": round(median["version"], 3),
        "dvc_status_s": round(median["status"], 3),
        "noop_repro_s3_remote_s": round(median["repro_s3_remote"], 3),
        "meets_target_s3_remote": median["repro_s3_remote"] <= TARGET_S,
        "ratio_s3_remote_to_local": round(median["repro_s3_remote"] / median["repro"], 3),
        "dvc_lock_unchanged_with_s3_remote": same_lock,
        "runs": a.runs,
        "all_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "first_repro_s": round(setup, 1),
        "files_under_data_and_runs": files,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
