"""Shared fixtures: the real Prefect API (ephemeral test server, started once) and the repo's params."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


@pytest.fixture(scope="session")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def params_file(tmp_path):
    """Write a params.yaml that is the repo's with some `curate` keys changed; returns its path."""

    def make(**curate) -> Path:
        data = yaml.safe_load(PARAMS.read_text())
        data["curate"].update(curate)
        path = tmp_path / f"params-{len(list(tmp_path.glob('params-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make
