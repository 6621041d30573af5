"""Rewrite the golden digests in this folder from the current code (NOT run by the tests).

    PYTHONPATH=$PWD .venv/bin/python tests/data/golden/record.py

Runs the two tests that check them with GANFLOW_UPDATE_GOLDEN=1 (tests/golden.py then writes instead of
comparing), twice: the second run compares, so a value that is not deterministic fails here, not later in CI.
Commit the changed .json files with a message that says which behaviour changed and why.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TESTS = ["tests/test_curate_flow.py::test_demo_end_to_end_shows_every_reason",
         "tests/test_dvc_pipeline.py::test_ingest_and_curate_outs_are_the_recorded_ones"]


def run(update: bool) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GANFLOW_UPDATE_GOLDEN": "1" if update else "0"}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT, env=env,
                   check=True)


if __name__ == "__main__":
    run(update=True)
    run(update=False)
    subprocess.run(["git", "status", "--short", "tests/data/golden"], cwd=ROOT)
