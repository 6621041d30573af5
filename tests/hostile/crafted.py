"""Crafted hostile files for the serve/CLI/checkpoint corpus, built at test time (nothing binary in git):
a tiny trained run, planted pickles that would leave a marker file if anything unpickled them, torn and empty
checkpoints, FIFOs, and the run ganflow's commands are pointed at."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

def tiny_run(root: Path) -> tuple[Path, Path]:
    """(data, run): a 32² curated set and a StyleGAN2 run on it as `ganflow train` + `evaluate` leave it: two
    checkpoints, best.pt from the first, fid.csv and metrics.json."""
    from tasks.evaluation.fid_table import write_fid_csv
    from tests.conftest import tiny_trained_run

    data, run, [(k0, _first), (k1, _second)] = tiny_trained_run(root)
    write_fid_csv(run, [{"kimg": k0, "fid": 12.5, "kid": 0.01}, {"kimg": k1, "fid": 30.0, "kid": None}])
    (run / "metrics.json").write_text(json.dumps({"best": {"kimg": k0, "fid": 12.5, "file": "best.pt"},
                                                  "flagged": {}}))
    return data, run


class Payload:
    """What a planted pickle carries: unpickling it calls Path.write_text(marker, 'pwned'), i.e. runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def planted_checkpoint(path: Path, marker: Path, like: Path | None = None) -> Path:
    """A checkpoint-named file whose pickle would run code: a real snapshot's entries (when `like` is given)
    plus one Payload. torch.load(weights_only=True) refuses it; a full pickle load writes `marker`."""
    state = torch.load(like, weights_only=True) if like is not None else {"G_ema": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "extra": Payload(marker)}, path)
    return path


def planted_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle (no torch zip) of a Payload."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"w": Payload(marker)}))
    return path


def unreadable_checkpoints(folder: Path, good: Path, marker: Path) -> dict[str, Path]:
    """One file (or thing) of each kind that is not a readable checkpoint, named like a checkpoint."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = good.read_bytes()
    kinds = {
        "planted": planted_checkpoint(folder / "planted.pt", marker, like=good),
        "plain-pickle": planted_pickle(folder / "plain-pickle.pt", marker),
        "truncated": folder / "truncated.pt",
        "empty": folder / "empty.pt",
        "text": folder / "text.pt",
        "list": folder / "list.pt",
        "no-arch": folder / "no-arch.pt",
        "bad-arch": folder / "bad-arch.pt",
    }
    kinds["truncated"].write_bytes(raw[: len(raw) // 2])
    kinds["empty"].write_bytes(b"")
    kinds["text"].write_text("not a checkpoint\n")
    torch.save([1, 2, 3], kinds["list"])
    torch.save({"G_ema": {"w": torch.zeros(1)}}, kinds["no-arch"])
    state = torch.load(good, weights_only=True)
    torch.save({**state, "arch": {"name": "stylegan2", "net": {"resolution": "x"}}}, kinds["bad-arch"])
    return kinds


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path
