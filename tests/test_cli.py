"""The `ganflow` command line as a user runs it: help, a curation with its summary, clear errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import skimage.data
from PIL import Image

from flows.cli import main
from tests.conftest import ROOT


def test_help_lists_subcommands_and_each_has_help():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "curate" in out
    sub = subprocess.run([sys.executable, "-m", "flows.cli", "curate", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    for flag in ("--input", "--hashtag", "--demo", "--out", "--resolution", "--matte"):
        assert flag in sub


def test_curate_prints_summary_and_where_results_are(prefect_api, tmp_path, capsys, params_file):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(skimage.data.rocket()).save(src / "rocket.jpg", quality=92)
    Image.fromarray(skimage.data.camera()).save(src / "camera.png")
    (src / "broken.jpg").write_bytes(b"")
    code = main(["curate", "--input", str(src), "--out", str(tmp_path / "out"), "--matte", "none",
                 "--params", str(params_file()), "--raw-root", str(tmp_path / "raw"),
                 "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert code == 0
    assert "matte: none" in out.out
    lines = {line.split()[0]: line.split()[1] for line in out.out.splitlines() if line.strip()
             and line.split()[0] in ("accepted", "grayscale", "empty", "total")}
    assert lines == {"accepted": "1", "grayscale": "1", "empty": "1", "total": "3"}
    assert f"Results in {(tmp_path / 'out').resolve()}" in out.out
    assert "cheap" in out.err and "100%" in out.err  # the per-stage progress bars


def test_missing_input_is_a_clear_error(prefect_api, tmp_path, capsys, params_file):
    code = main(["curate", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                 "--params", str(params_file()), "--raw-root", str(tmp_path / "raw")])
    assert code == 2
    assert "input not found" in capsys.readouterr().err


def test_hashtag_without_session_fails_once_with_instructions(prefect_api, tmp_path, capsys, params_file,
                                                              monkeypatch):
    monkeypatch.delenv("GANFLOW_IG_SESSIONFILE", raising=False)
    monkeypatch.delenv("GANFLOW_IG_USER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no default instaloader session either
    code = main(["curate", "--hashtag", "sneakers", "--out", str(tmp_path / "out"),
                 "--params", str(params_file()), "--raw-root", str(tmp_path / "raw")])
    err = capsys.readouterr().err
    assert code == 2
    assert "instaloader --login" in err and "GANFLOW_IG_SESSIONFILE" in err


def test_bad_params_value_is_a_clear_error(prefect_api, tmp_path, capsys, params_file):
    code = main(["curate", "--demo", "--out", str(tmp_path / "out"),
                 "--params", str(params_file(face_mode="sometimes"))])
    assert code == 2
    assert "face_mode" in capsys.readouterr().err
