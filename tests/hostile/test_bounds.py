"""Issue 28, points 2 and 4: every run is finite and every bad value one line. Numeric settings are bounded so no
loop runs without progress (kimg, cycle and snapshot intervals); a params file is bounded in size, alias expansion,
nesting and value length before it is parsed into objects; a Dask scheduler that never answers, or a tls:// one
without certificates, is one line within seconds; a hashtag is checked by its 1-100 character rule before Prefect
starts."""
from __future__ import annotations

import time

import pytest

from tasks.common.settings import ParamsError, TrainSettings, load
from tests.conftest import PARAMS, write_curated
from tests.one_line import refused


@pytest.fixture
def train_args(tmp_path):
    data = write_curated(tmp_path / "data", n=2, side=8)
    return ["train", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--params", str(PARAMS)]


@pytest.mark.parametrize("option, value, says", [
    ("--kimg", "1e308", "is not a finite number from 0 to 1000000"),
    ("--cycle-kimg", "1e-9", "is not a finite number from 0.001 to 1000000"),
    ("--snapshot-kimg", "1e-7", "is not a finite number from 0.001 to 1000000"),  # rounded to 0 images before
    ("--stabilize-kimg", "1e-300", "is not a finite number from 0.001 to 1000000"),
    ("--cycles", "9" * 5001, "is not an integer from 1 to 10000"),
])
def test_train_intervals_that_never_finish_are_refused(train_args, capsys, option, value, says):
    refused([*train_args, option, value], capsys, f"argument {option}", says)


def test_more_stage_tasks_than_the_bound_are_refused_naming_both_settings(train_args, capsys):
    refused([*train_args, "--kimg", "100000", "--cycle-kimg", "1"], capsys, "train.kimg 100000",
            "train.cycle_kimg 1", "100,000 stage tasks, more than 10,000")


def test_every_numeric_setting_has_an_upper_bound():
    """No int or float setting is left unbounded above (a typo's huge value would run for ever or overflow)."""
    from annotated_types import Le, Lt

    from tasks.common.settings import SECTIONS, annotation

    unbounded = [f"{m.section}.{name}" for m in SECTIONS.values() for name, f in m.model_fields.items()
                 if annotation(f) in (int, float) and not any(isinstance(x, (Le, Lt)) for x in f.metadata)
                 and name not in ("r1_gamma",)]
    assert unbounded == []


def _params(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def _billion_laughs() -> str:
    lines = ["train:", "  net:", "    a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        lines.append(f"    {chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, says", [
    (_billion_laughs(), "train.net.f expands to more than 100,000 values"),
    ("train:\n  net: " + "[" * 5000 + "]" * 5000 + "\n", "train.net nests more than 64 levels deep"),
    ("train:\n  kimg: " + "9" * 5001 + "\n", "train.kimg holds a value of 5,001 characters (at most 4,096)"),
    ("train:\n  kimg: 1\n" + "#" * (1 << 20) + "\n", "is larger than 1024 KiB"),
])
def test_a_params_file_is_bounded_before_it_is_parsed(tmp_path, text, says):
    started = time.process_time()
    with pytest.raises(ParamsError, match=None) as e:
        load(TrainSettings, _params(tmp_path, text))
    assert says in str(e.value) and "\n" not in str(e.value)
    assert time.process_time() - started < 30  # not the minutes (and GBs) the unbounded parse took


def test_the_bounded_params_file_is_one_line_on_the_command_line(train_args, tmp_path, capsys):
    args = [a if a != str(PARAMS) else str(_params(tmp_path, "train:\n  kimg: " + "9" * 5001 + "\n"))
            for a in train_args]
    refused(args, capsys, "train.kimg", "5,001 characters")


def test_net_yaml_option_is_bounded_too(train_args, capsys):
    refused([*train_args, "--net", "{a: " + "[" * 5000 + "]" * 5000 + "}"], capsys, "argument --net")


def test_a_10000_character_hashtag_is_refused_by_its_rule_before_prefect_starts(tmp_path, capsys, monkeypatch):
    import flows.curate

    monkeypatch.setattr(flows.curate, "curate", lambda **kw: pytest.fail("the flow started"))
    line = refused(["curate", "--hashtag", "a" * 10_000, "--out", str(tmp_path / "new"), "--params", str(PARAMS)],
                   capsys, "ingest.hashtag", "1 to 100 ASCII letters, digits or '_'", "(10,000 characters)")
    assert len(line) < 300


def test_a_dask_scheduler_that_never_answers_is_one_line_within_seconds(silent_port, tmp_path, capsys, monkeypatch):
    import tasks.curation.cluster as cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    started = time.monotonic()
    refused(["curate", "--demo", "--dask", f"tcp://127.0.0.1:{silent_port}", "--out", str(tmp_path / "new"),
             "--params", str(PARAMS)], capsys, f"cannot reach the Dask scheduler at tcp://127.0.0.1:{silent_port}",
            "within 1 s")
    assert time.monotonic() - started < 60 and not (tmp_path / "new").exists()


def test_a_tls_dask_address_without_certificates_is_one_line(tmp_path, capsys):
    refused(["curate", "--demo", "--dask", "tls://127.0.0.1:1", "--out", str(tmp_path / "new"),
             "--params", str(PARAMS)], capsys, "is tls:// but Dask's configuration names no certificates")


def test_a_5001_digit_option_is_one_short_line_naming_the_option(train_args, capsys):
    line = refused([*train_args, "--batch", "9" * 5001], capsys, "argument --batch", "(5,001 characters)")
    assert len(line) < 300


def test_a_full_disk_while_curating_names_the_dataset_once_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno
    import os

    import tasks.curation.publish as publish
    from models.atomic_file import DiskFullError
    from tests.hostile.test_outputs import _leftovers, dataset

    out = tmp_path / "out"
    dataset(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(path, members):
        path.write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a full disk, simulated: a tiny tmpfs needs root

    monkeypatch.setattr(publish, "_write_tar", full)
    with pytest.raises(DiskFullError) as e:
        dataset(out, n=3, seed=1)
    assert str(e.value).count(str(out)) == 1 and "the disk is full (about" in str(e.value) and "needed" in str(e.value)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before and not _leftovers(tmp_path)
