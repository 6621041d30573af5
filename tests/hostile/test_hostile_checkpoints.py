"""Hostile files that ganflow would unpickle or load: nothing in them ever runs, each is a one-line error naming the
file (exit 2, no traceback), and evaluation and serving go on past the bad ones.

- Inception weights swapped between the check and the use cannot run code: the path is read once, and the
  extractor is built from the checked bytes (issue 15, point 1).
- Planted pickles, torn, empty, odd-schema checkpoints and folders: generate, morph, train --resume-from and serve
  --snapshot answer one line; evaluate skips them with a warning and still exports best.pt; serve starts on the
  newest snapshot that loads; a poisoned real-statistics cache is recomputed (point 6).
"""
from __future__ import annotations

import io
import os
import pickle
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from flows.cli import main
from tests.hostile.crafted import Payload, fifo, planted_checkpoint, tiny_run, unreadable_checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread) -> tuple[Path, Path]:
    return tiny_run(tmp_path_factory.mktemp("hostile-ckpt"))


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    from tasks.evaluation.metrics import write_random_inception_weights

    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


def one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# ------------------------------------------------------------------ point 1: read once, never unpickled twice
class _OpenAudit:
    """Counts the times a path is opened in this process (the interpreter's `open` audit event: builtins.open,
    io.open and os.open all raise it), for as long as `path` is set."""

    installed = None

    def __init__(self) -> None:
        self.path: str | None = None
        self.count = 0

    def __call__(self, event: str, args: tuple) -> None:
        if event == "open" and self.path is not None and args and isinstance(args[0], (str, Path)):
            name = str(args[0])
            if os.path.basename(name) == os.path.basename(self.path) and os.path.realpath(name) == self.path:
                self.count += 1

    @classmethod
    def get(cls) -> _OpenAudit:
        if cls.installed is None:  # audit hooks cannot be removed: one for the session, idle while path is None
            cls.installed = cls()
            sys.addaudithook(cls.installed)
        return cls.installed


def test_inception_weights_swapped_after_the_check_never_run_code(inception, tmp_path, monkeypatch):
    """The attack of issue 15: the weights path holds a valid state dict when it is checked and a payload pickle
    right after. The extractor must come from the checked bytes; the path must never be read again."""
    from tasks.evaluation.metrics import load_extractor

    weights = tmp_path / "weights.pth"
    shutil.copyfile(inception, weights)
    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "evil": Payload(marker)}, payload)
    good = torch.load(inception, weights_only=True)

    real_load, swapped = torch.load, []

    def load_then_swap(f, *args, **kwargs):  # the check's load: the file changes the moment it returns
        out = real_load(f, *args, **kwargs)
        if not swapped:
            swapped.append(True)
            watched, audit.path = audit.path, None  # the attacker's write is not ganflow reading the file
            shutil.copyfile(payload, weights)
            audit.path = watched
        return out

    audit = _OpenAudit.get()
    monkeypatch.setattr(torch, "load", load_then_swap)
    audit.path, audit.count = str(weights.resolve()), 0
    try:
        extractor, digest = load_extractor(weights)
    finally:
        audit.path = None
    assert swapped, "the check never loaded the weights"
    assert audit.count == 1  # read once: hashed, checked and loaded from the same bytes
    assert not marker.exists()  # torch-fidelity's weights_only=False load never saw the path
    assert torch.equal(extractor.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                       good["Mixed_7c.branch_pool.conv.weight"])
    import hashlib
    assert digest == hashlib.sha256(inception.read_bytes()).hexdigest()


def test_weights_that_weights_only_refuses_are_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"
    planted = planted_checkpoint(tmp_path / "w.pth", marker)
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
    assert main(["fid", str(a), str(b), "--inception-weights", str(planted)]) == 2
    one_line_error(capsys, str(planted), "weights_only=True")
    assert not marker.exists()


def test_a_planted_instagram_session_file_is_refused_unrun(tmp_path):
    from tasks.ingestion.sources.instagram import InstagramSetupError, open_session

    marker = tmp_path / "pwned"
    session = tmp_path / "session-tester"
    session.write_bytes(pickle.dumps({"csrftoken": Payload(marker)}))
    with pytest.raises(InstagramSetupError, match="session-tester"):
        open_session(str(session))
    assert not marker.exists()


# ------------------------------------------------------------------ point 6: unreadable checkpoints, one line each
KINDS = ["planted", "plain-pickle", "truncated", "empty", "text", "list", "no-arch", "bad-arch"]


@pytest.fixture(scope="module")
def bad_files(trained, tmp_path_factory) -> tuple[dict[str, Path], Path]:
    _data, run = trained
    root = tmp_path_factory.mktemp("bad")
    marker = root / "pwned"
    return unreadable_checkpoints(root / "files", run / "best.pt", marker), marker


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["generate", "morph", "serve"])
def test_an_unreadable_snapshot_is_one_line_naming_the_file(command, kind, bad_files, tmp_path, capsys, monkeypatch):
    import uvicorn

    files, marker = bad_files
    path = files[kind]
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served a snapshot that does not load"))
    argv = {"generate": ["generate", "--snapshot", str(path), "--seeds", "1", "--out", str(tmp_path / "out")],
            "morph": ["morph", "--snapshot", str(path), "--seeds", "1,2", "--frames", "2",
                      "--out", str(tmp_path / "m.gif")],
            "serve": ["serve", "--snapshot", str(path)]}[command]
    assert main(argv) == 2
    one_line_error(capsys, path.name)
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.gif").exists()


@pytest.mark.parametrize("kind", ["planted", "truncated", "empty", "list", "no-arch"])
def test_train_resume_from_an_unreadable_snapshot_is_one_line(kind, bad_files, trained, tmp_path, capsys):
    files, marker = bad_files
    data, _run = trained
    argv = ["train", "--data", str(data), "--run-dir", str(tmp_path / "r"), "--arch", "stylegan2",
            "--resolution", "32", "--kimg", "0.004", "--channel-base", "512", "--channel-max", "64", "--batch", "4",
            "--device", "cpu", "--resume-from", str(files[kind])]
    assert main(argv) == 2
    one_line_error(capsys, files[kind].name)
    assert not marker.exists()
    assert not list((tmp_path / "r").glob("checkpoints/*.pt"))  # refused before any training


@pytest.mark.parametrize("make", ["folder", "fifo"])
def test_a_folder_or_fifo_named_like_a_snapshot_is_refused_without_blocking(make, tmp_path, capsys):
    from models.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "ckpt-0000001.000.pt"
    path.mkdir() if make == "folder" else fifo(path)
    with pytest.raises(SystemExit) as exit_:  # refused while the arguments are parsed
        main(["generate", "--snapshot", str(path), "--seeds", "1", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    one_line_error(capsys, "--snapshot", path.name)
    with pytest.raises(CheckpointError, match="not a regular file|cannot be opened"):
        load_checkpoint(path)  # O_NONBLOCK: a FIFO with no writer does not hang the open


def test_evaluate_skips_an_unreadable_snapshot_and_still_exports_best(trained, inception, tmp_path, capsys):
    """Also: `ganflow evaluate` reads the weights file once (one FID is costly: one evaluation checks both)."""
    data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("best.pt", "metrics.json", "fid.csv"):
        (copy / name).unlink()
    marker = tmp_path / "pwned"
    first, second = sorted((copy / "checkpoints").glob("ckpt-*.pt"))
    planted_checkpoint(copy / "checkpoints" / "ckpt-0000000.001.pt", marker, like=first)  # the oldest: the key's
    second.write_bytes(second.read_bytes()[:1000])  # torn
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  n_fake: 2\n  n_real: 4\n  batch: 4\n  kid: false\n  cache_dir: ''\n")
    audit = _OpenAudit.get()
    audit.path, audit.count = str(inception.resolve()), 0
    try:
        assert main(["evaluate", "--run-dir", str(copy), "--data", str(data), "--inception-weights", str(inception),
                     "--params", str(params)]) == 0
    finally:
        audit.path = None
    assert audit.count == 1  # the weights: read once, hashed for the key and loaded from those bytes
    err = capsys.readouterr().err
    assert "Traceback" not in err and not marker.exists()
    warned = [line for line in err.splitlines() if "warning: skipped" in line]
    assert len(warned) == 2 and any("ckpt-0000000.001.pt" in w for w in warned) and any(second.name in w for w in warned)
    best = torch.load(copy / "best.pt", weights_only=True)
    assert best["source"] == first.name  # the one snapshot that loads is the best
    assert [r.split(",")[0] for r in (copy / "fid.csv").read_text().splitlines()[1:]] == [repr(float(first.name[5:-3]))]


def test_evaluate_with_no_readable_snapshot_is_one_line(trained, inception, tmp_path, capsys):
    data, run = trained
    marker = tmp_path / "pwned"
    planted_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt-0000001.000.pt", marker)
    assert main(["evaluate", "--run-dir", str(tmp_path / "run"), "--data", str(data),
                 "--inception-weights", str(inception)]) == 2
    one_line_error(capsys, "ckpt-0000001.000.pt")
    assert not marker.exists()


def test_serve_starts_past_a_bad_best_pt_and_names_it(trained, tmp_path, capsys, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    _data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "pwned"
    planted_checkpoint(copy / "best.pt", marker, like=run / "best.pt")
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", "--run-dir", str(copy)]) == 0
    err = capsys.readouterr().err
    assert "warning: snapshot 'best.pt' does not load" in err and "Traceback" not in err
    newest = sorted((copy / "checkpoints").glob("ckpt-*.pt"))[-1].name
    assert f"checkpoints/{newest}" in err  # what it serves instead
    client = TestClient(seen["app"], base_url="http://127.0.0.1:8000")
    assert client.get("/api/info").json()["snapshot"] == f"checkpoints/{newest}"
    r = client.get("/api/image.png", params={"seed": 1, "snapshot": "best.pt"})
    assert r.status_code == 422 and "best.pt" in r.json()["detail"] and str(tmp_path) not in r.text
    assert not marker.exists()


def test_serve_with_no_snapshot_that_loads_is_one_line(bad_files, tmp_path, capsys):
    files, _marker = bad_files
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(files["truncated"], run / "best.pt")
    shutil.copyfile(files["planted"], run / "checkpoints" / "ckpt-0000001.000.pt")
    assert main(["serve", "--run-dir", str(run)]) == 2
    one_line_error(capsys, "no snapshot loads", "best.pt", "ckpt-0000001.000.pt")


# ------------------------------------------------------------------ poisoned real-statistics caches
@pytest.fixture(scope="module")
def extractor(inception):
    from tasks.evaluation.metrics import load_extractor

    return load_extractor(inception)


@pytest.mark.parametrize("poison", ["planted", "torn", "schema", "folder"])
def test_a_poisoned_real_stats_cache_is_recomputed_with_a_warning(poison, trained, extractor, tmp_path):
    from tasks.evaluation.metrics import _cache_file, content_hash, real_stats

    data, _run = trained
    extractor, digest = extractor
    cache_dir = tmp_path / "cache"
    fresh, cached = real_stats(data, extractor, digest, cache_dir, batch=12)
    assert not cached
    cache = _cache_file(cache_dir, content_hash(data), digest, None)
    marker = tmp_path / "pwned"
    if poison == "planted":
        torch.save({"mu": torch.zeros(2048), "evil": Payload(marker)}, cache)
    elif poison == "torn":
        cache.write_bytes(cache.read_bytes()[:500])
    elif poison == "schema":
        torch.save({"mu": torch.zeros(3), "sigma": torch.zeros(3, 3), "n": 12}, cache)
    else:
        cache.unlink()
        cache.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, cached = real_stats(data, extractor, digest, cache_dir, batch=12)
    assert not cached and not marker.exists()
    assert any(str(cache) in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert again.n == fresh.n and (again.mu == fresh.mu).all()
    if poison != "folder":  # rewritten: the next evaluation reads it from the cache again
        assert real_stats(data, extractor, digest, cache_dir, batch=12)[1]


def test_an_unreadable_checkpoint_is_skipped_when_training_resumes(trained, tmp_path):
    from models.checkpoint import latest_checkpoint

    _data, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "pwned"
    older = sorted((copy / "checkpoints").glob("ckpt-*.pt"))[0]
    planted_checkpoint(copy / "checkpoints" / "ckpt-0000099.000.pt", marker, like=older)
    with pytest.warns(UserWarning, match="ckpt-0000099.000.pt"):
        path, _state = latest_checkpoint(copy)
    assert path.name != "ckpt-0000099.000.pt" and not marker.exists()


def test_payload_bytes_really_would_run_code(tmp_path):
    """The corpus is live: a full pickle load of a planted file does write the marker (so its absence above means
    nothing unpickled it, not that the payload was inert)."""
    marker = tmp_path / "pwned"
    planted = planted_checkpoint(tmp_path / "p.pt", marker)
    # The archive's pickle, unpickled as a full loader would (never with torch.load: the project loads
    # weights_only=True only); storages are left out, the Payload's __reduce__ still runs.
    with zipfile.ZipFile(planted) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        unpickler = pickle.Unpickler(io.BytesIO(z.read(name)))
        unpickler.persistent_load = lambda pid: None
        unpickler.load()
    assert marker.read_text() == "pwned"
    marker.unlink()
    pickle.load(io.BytesIO(pickle.dumps(Payload(marker))))
    assert marker.exists()
