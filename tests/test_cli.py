"""The `ganflow` command line as a user runs it: help, a curation with its summary, clear errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import skimage.data
from PIL import Image

from tests.conftest import ROOT


def test_a_command_imports_its_own_code_only_and_help_still_lists_every_command():
    """dvc.yaml's deps list what each stage's command imports: `ganflow ingest` must not load the evaluation,
    queue or serving commands (their changes would rerun every stage). `ganflow --help` and an unknown command's
    error still name every command, and the lazy table names exactly the commands its modules add."""
    from flows.cli import _COMMANDS, build_parser

    probe = ("import sys; from flows.cli import build_parser; build_parser(sys.argv[1]); "
             "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('flows', 'tasks'))))")
    loaded = {cmd: set(subprocess.run([sys.executable, "-c", probe, cmd], capture_output=True, text=True, cwd=ROOT,
                                      check=True).stdout.split()) for cmd in ("ingest", "evaluate")}
    others = {"flows.eval_cli", "flows.queue_cli", "flows.serve_cli", "flows.datasets_cli", "tasks.manager.queue"}
    assert not loaded["ingest"] & others, loaded["ingest"]
    assert "flows.eval_cli" in loaded["evaluate"] and "flows.serve_cli" not in loaded["evaluate"]
    choices = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert list(choices) == [name for names, _ in _COMMANDS for name in names]
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert all(name in out for name in ("ingest", "manager", "evaluate", "datasets", "serve", "import"))
    for before in (["--help", "train"], ["-h", "curate"]):  # the top-level help, whole, as argparse gives it
        text = subprocess.run([sys.executable, "-m", "flows.cli", *before], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout
        assert all(name in text for name in ("ingest", "manager", "evaluate", "serve", "import")), text
    bad = subprocess.run([sys.executable, "-m", "flows.cli", "curat"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "invalid choice: 'curat'" in bad.stderr and "serve" in bad.stderr, bad.stderr


@pytest.fixture
def ganflow(prefect_api, tmp_path):
    """Run `ganflow ...` in a subprocess against the test harness's Prefect server, as a user would."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "HOME": str(tmp_path),
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("GANFLOW_IG_SESSIONFILE", None)
    env.pop("GANFLOW_IG_USER", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=600)

    return run


def test_help_lists_subcommands_and_each_has_help():
    out = subprocess.run([sys.executable, "-m", "flows.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert "curate" in out
    sub = subprocess.run([sys.executable, "-m", "flows.cli", "curate", "--help"], capture_output=True,
                         text=True, cwd=ROOT, check=True).stdout
    for flag in ("--input", "--hashtag", "--demo", "--out", "--resolution", "--matte"):
        assert flag in sub


def test_curate_prints_summary_and_where_results_are(ganflow, tmp_path, params_file):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(skimage.data.rocket()).save(src / "rocket.jpg", quality=92)
    Image.fromarray(skimage.data.camera()).save(src / "camera.png")
    (src / "broken.jpg").write_bytes(b"")
    out = ganflow("curate", "--input", str(src), "--out", str(tmp_path / "out"), "--matte", "none",
                  "--params", str(params_file()), "--raw-root", str(tmp_path / "raw"),
                  "--cache-dir", str(tmp_path / "cache"))
    assert out.returncode == 0, out.stderr
    assert "matte: none" in out.stdout
    lines = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.strip()
             and line.split()[0] in ("accepted", "grayscale", "empty", "total")}
    assert lines == {"accepted": "1", "grayscale": "1", "empty": "1", "total": "3"}
    assert f"Results in {(tmp_path / 'out').resolve()}" in out.stdout
    assert "cheap" in out.stderr and "100%" in out.stderr  # the per-stage progress bars


def test_missing_input_is_a_clear_error(ganflow, tmp_path, params_file):
    out = ganflow("curate", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                  "--params", str(params_file()), "--raw-root", str(tmp_path / "raw"))
    assert out.returncode == 2
    assert "ganflow curate: error: input not found" in out.stderr


def test_hashtag_without_session_fails_once_with_instructions(ganflow, tmp_path, params_file):
    # HOME is a fresh folder: no default instaloader session there either.
    out = ganflow("curate", "--hashtag", "sneakers", "--out", str(tmp_path / "out"),
                  "--params", str(params_file()), "--raw-root", str(tmp_path / "raw"))
    assert out.returncode == 2
    assert "instaloader --login" in out.stderr and "GANFLOW_IG_SESSIONFILE" in out.stderr


def test_bad_params_value_is_a_clear_error(ganflow, tmp_path, params_file):
    out = ganflow("curate", "--demo", "--out", str(tmp_path / "out"),
                  "--params", str(params_file(face_mode="sometimes")))
    assert out.returncode == 2
    assert "face_mode" in out.stderr


def test_ingest_reads_its_source_from_params_and_says_what_is_missing(tmp_path):
    """`ganflow ingest` (the DVC ingest stage): the source comes from params.yaml's ingest section, a
    source option overrides it, and an incomplete section is a one-line error."""
    import yaml

    from tests.conftest import PARAMS

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(photos / "astronaut.png")
    params = yaml.safe_load(PARAMS.read_text())
    params["ingest"].update(source="path", input=str(photos))
    good = tmp_path / "params.yaml"
    good.write_text(yaml.safe_dump(params))
    params["ingest"].update(input="")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))

    def ingest(*args):
        return subprocess.run([sys.executable, "-m", "flows.cli", "ingest", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)

    done = ingest("--raw-dir", str(tmp_path / "raw"), "--params", str(good))
    assert done.returncode == 0, done.stderr
    assert "1 inputs" in done.stdout and len(list((tmp_path / "raw" / "files").iterdir())) == 1
    failed = ingest("--raw-dir", str(tmp_path / "raw2"), "--params", str(bad))
    assert failed.returncode == 2 and "set ingest.input" in failed.stderr
    assert not (tmp_path / "raw2").exists()
    given = ingest("--raw-dir", str(tmp_path / "raw3"), "--params", str(bad), "--input", str(photos))
    assert given.returncode == 0, given.stderr  # the option replaces the params' (incomplete) source


def test_every_train_option_reaches_the_train_flow(tmp_path):
    """`ganflow train --flow` hands its options to the train flow: each option of `ganflow train` is one of the flow's
    settings or parameters (--xflip too, once an option of plain `ganflow train` only), and one the flow cannot take
    is a one-line error before anything runs, never silently dropped."""
    import argparse
    import inspect

    from flows.cli import build_parser
    from flows.train import train_flow
    from flows.train_cli import flow_parameters
    from tasks.common.settings import TrainSettings

    accepted = set(inspect.signature(train_flow.fn).parameters)
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    own = {"help", "flow", "request_id"}  # the parser's, not the run's
    assert {a.dest for a in train._actions} - own <= accepted | set(TrainSettings.model_fields)
    args = build_parser().parse_args(["train", "--flow", "--data", str(tmp_path / "d"), "--run-dir",
                                      str(tmp_path / "r"), "--batch", "8", "--xflip"])
    parameters = flow_parameters(args, accepted)
    assert (parameters["settings"].batch, parameters["settings"].xflip) == (8, True)
    with pytest.raises(ValueError, match=r"^--mirror: the train flow takes no such option"):
        flow_parameters(argparse.Namespace(**vars(args), mirror=True), accepted)


def test_stage_retries_are_train_flow_settings(tmp_path, capsys):
    """--retries and --retry-delay-seconds are the train flow's stage-task retries: with --flow they fill its
    settings; plain `ganflow train` (no stage tasks) refuses them in one line before anything runs."""
    import inspect

    from flows.cli import build_parser, main
    from flows.train import train_flow
    from flows.train_cli import flow_parameters

    (tmp_path / "d").mkdir()
    common = ["train", "--data", str(tmp_path / "d"), "--run-dir", str(tmp_path / "r"), "--retries", "3"]
    code = main(common)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("ganflow train: error: --retries: the train flow's stage retries; add --flow"), err
    assert not (tmp_path / "r").exists()
    args = build_parser().parse_args([*common, "--flow", "--retry-delay-seconds", "5"])
    settings = flow_parameters(args, set(inspect.signature(train_flow.fn).parameters))["settings"]
    assert (settings.retries, settings.retry_delay_seconds) == (3, 5)


def test_max_posts_is_the_ingest_setting_with_its_bound_and_a_bad_one_is_one_line(tmp_path, capsys, monkeypatch):
    """--max-posts of `curate` and `ingest` is generated from IngestSettings.max_posts: --help shows its bound and
    that params.yaml's ingest.max_posts is the default; a bad value, given or in params.yaml, is one line and
    nothing is written."""
    import yaml

    from flows.cli import main
    from tests.conftest import PARAMS

    monkeypatch.delenv("GANFLOW_IG_SESSIONFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for command in ("curate", "ingest"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "hashtag: posts to take (an integer from 1 to 1000000; default: ingest.max_posts)" in " ".join(
            capsys.readouterr().out.split())
    where = ["--raw-root", str(tmp_path / "raw"), "--cache-dir", str(tmp_path / "cache")]
    for args in (["curate", "--hashtag", "cats", "--out", str(tmp_path / "out"), *where],
                 ["ingest", "--hashtag", "cats", "--raw-dir", str(tmp_path / "raw")]):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--max-posts", "0"])
        assert exit_.value.code == 2 and capsys.readouterr().err.splitlines() == [
            f"ganflow {args[0]}: error: argument --max-posts: '0' is not an integer from 1 to 1000000 "
            f"(see `ganflow {args[0]} --help`)"]
    params = yaml.safe_load(PARAMS.read_text())
    params["ingest"]["max_posts"] = 0
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    code = main(["curate", "--hashtag", "cats", "--out", str(tmp_path / "out"), "--params", str(bad), *where])
    assert code == 2 and capsys.readouterr().err.splitlines() == [
        "ganflow curate: error: ingest.max_posts 0 is not an integer from 1 to 1000000"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "raw").exists()
