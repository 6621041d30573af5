"""Issue 28, point 2: every network call has a timeout, and a server that accepts and never answers is one line
within a bounded time. The servers are real sockets on localhost (tests/hostile/conftest.py); the clients are
Prefect's and instaloader's own, unpatched. (Dask's probe: test_bounds.py.)"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import PARAMS, ROOT, write_curated
from tests.one_line import refused


# ------------------------------------------------------------------ the Prefect API
@pytest.fixture
def api_at():
    """Point the Prefect client of this process at a URL for the duration of a `with`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return lambda port: temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"})


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


@pytest.mark.parametrize("command", ["curate", "manager", "train --flow"])
def test_a_prefect_api_that_never_answers_is_one_line_before_any_flow_starts(command, silent_port, api_at, tmp_path,
                                                                             capsys, monkeypatch):
    import tasks.common.prefect_api as prefect_api

    monkeypatch.setattr(prefect_api, "PROBE_TIMEOUT_S", 1.0)
    argv = {"curate": ["curate", "--demo", "--out", str(tmp_path / "new")],
            "manager": ["manager", "--once", "--queue", str(tmp_path / "q.sqlite")],
            "train --flow": ["train", "--flow", "--data", str(write_curated(tmp_path / "data", n=2, side=8)),
                             "--run-dir", str(tmp_path / "new"), "--kimg", "0.004"]}[command]
    with api_at(silent_port):
        refused([*argv, "--params", str(PARAMS)], capsys,
                f"the Prefect API at http://127.0.0.1:{silent_port}/api did not answer within 1 s: timed out")
    assert not (tmp_path / "new").exists()


def test_an_unreachable_prefect_api_is_one_line(api_at, tmp_path, capsys):
    import tasks.common.prefect_api as prefect_api

    port = _closed_port()
    with api_at(port):
        refused(["curate", "--demo", "--out", str(tmp_path / "new"), "--params", str(PARAMS)], capsys,
                f"the Prefect API at http://127.0.0.1:{port}/api did not answer within "
                f"{prefect_api.PROBE_TIMEOUT_S:g} s: no connection")


def test_prefect_requests_are_bounded_unless_the_user_set_them(monkeypatch):
    """Prefect's defaults (60 s a request, 5 retries) held a command ~7 minutes on a stalled server; ganflow's
    commands lower them, and a value the user chose is kept."""
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from tasks.common.prefect_api import API_RETRIES, API_TIMEOUT_S, bounded_requests

    monkeypatch.delenv("PREFECT_API_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("PREFECT_CLIENT_MAX_RETRIES", raising=False)
    assert (PREFECT_API_REQUEST_TIMEOUT.value(), PREFECT_CLIENT_MAX_RETRIES.value()) == (60.0, 5)  # Prefect's
    with bounded_requests():
        assert (PREFECT_API_REQUEST_TIMEOUT.value(), PREFECT_CLIENT_MAX_RETRIES.value()) == (API_TIMEOUT_S,
                                                                                            API_RETRIES)
    with temporary_settings({PREFECT_API_REQUEST_TIMEOUT: 30.0, PREFECT_CLIENT_MAX_RETRIES: 4}), bounded_requests():
        assert (PREFECT_API_REQUEST_TIMEOUT.value(), PREFECT_CLIENT_MAX_RETRIES.value()) == (30.0, 4)


def test_a_prefect_api_that_stops_answering_mid_command_is_one_line(health_only_port, tmp_path):
    """The server answers the probe, then hangs: the manager's flow fails at its first real request, after the
    request timeout, with one line naming the API and the settings that bounded the wait (a real process: Prefect's
    engine, its logging and its threads as a user runs them)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_API_URL": f"http://127.0.0.1:{health_only_port}/api",
           "PREFECT_API_REQUEST_TIMEOUT": "1", "PREFECT_CLIENT_MAX_RETRIES": "0"}
    done = subprocess.run([sys.executable, "-m", "flows.cli", "manager", "--once", "--queue",
                           str(tmp_path / "q.sqlite"), "--params", str(PARAMS)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"ganflow manager: error: the Prefect API at http://127.0.0.1:{health_only_port}/api "
                               "did not answer (PREFECT_API_REQUEST_TIMEOUT 1 s, PREFECT_CLIENT_MAX_RETRIES 0): "
                               "timed out"), lines


def test_train_status_with_a_silent_api_warns_in_one_line_and_shows_the_queue(silent_port, api_at, tmp_path, capsys,
                                                                             monkeypatch):
    import tasks.common.prefect_api as prefect_api
    from flows.cli import main
    from tasks.manager.queue import Queue

    monkeypatch.setattr(prefect_api, "PROBE_TIMEOUT_S", 1.0)
    q = Queue(tmp_path / "q.sqlite")
    req = q.submit(dict(data="/d", run_dir=str(tmp_path / "run"), arch="stylegan2", resolution=32, kimg=1.0, seed=0))
    assert q.claim(req.id, "queued", 0, start_kimg=0.0) == 1  # running: status asks the API about it
    with api_at(silent_port):
        assert main(["train", "status", "--queue", str(tmp_path / "q.sqlite"), "--params", str(PARAMS)]) == 0
    out, err = capsys.readouterr()
    assert req.id in out and "running" in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "warning: the Prefect API" in lines[0] and "did not answer" in lines[0], err


# ------------------------------------------------------------------ Instagram
def _session_file(tmp_path) -> str:
    import pickle

    path = tmp_path / "session-tester"  # what `instaloader --login tester` writes: a pickle of cookies
    path.write_bytes(pickle.dumps({"csrftoken": "tok", "sessionid": "sid", "ds_user_id": "7", "mid": "m"}))
    return str(path)


def test_an_instagram_that_accepts_and_never_answers_is_one_line(silent_port, tmp_path, capsys, monkeypatch):
    """instaloader's own session, unpatched, reaches "Instagram" through an HTTPS proxy (the environment's
    HTTPS_PROXY, which requests honours) that accepts and never answers: the network stalls, nothing else is
    faked. Each request gives up after the timeout; the scrape ends in one line, the raw store kept."""
    import instaloader

    import tasks.ingestion.sources.instagram as ig

    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{silent_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(ig, "REQUEST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(instaloader.InstaloaderContext, "do_sleep", lambda self: None)  # its random 0-15 s pauses
    from flows.cli import main

    assert main(["ingest", "--hashtag", "cats", "--raw-dir", str(tmp_path / "raw"), "--session-file",
                 _session_file(tmp_path), "--params", str(PARAMS)]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.strip() and not line.lstrip().startswith("ingest: ")]  # bar
    assert len(said) == 1 and "Traceback" not in err, err
    assert said[0].startswith(f"ganflow ingest: error: Instagram did not answer #cats within 1 s "
                              f"({ig.CONNECTION_ATTEMPTS} tries): JSON Query to "), said
    assert said[0].endswith("Read timed out. (read timeout=1.0); what was stored is kept and a rerun resumes the "
                            "walk"), said


def test_an_image_download_that_stalls_gives_up_too(silent_port, tmp_path, monkeypatch):
    """The CDN download (instaloader's get_raw, which leaves requests' errors raw) is bounded the same way, and
    nothing half-downloaded reaches the raw store."""
    from instaloader import ConnectionException

    import tasks.ingestion.sources.instagram as ig

    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{silent_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(ig, "REQUEST_TIMEOUT_S", 1.0)
    with pytest.raises(ConnectionException) as e:
        ig._download(ig.make_loader(), "https://scontent.cdninstagram.com/v/x.jpg?sig=1", tmp_path, "x_0.jpg", {})
    assert ig._timed_out(e.value) and "Download of https://scontent.cdninstagram.com/v/x.jpg:" in str(e.value)
    assert not any(tmp_path.iterdir())
