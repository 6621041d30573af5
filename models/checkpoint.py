"""Full-state checkpoints: written atomically, loaded with weights_only=True, newest loadable wins.

Everything in a checkpoint is tensors, numbers, strings, lists and dicts, so the safe unpickler reads it
(no pickled classes or code). RNG states are converted to that form here.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d+(?:\.\d+)?)\.pt$")


def checkpoint_name(kimg: float) -> str:
    return f"ckpt-{kimg:010.3f}.pt"


def rng_state() -> dict[str, Any]:
    """torch, numpy and python RNG states in weights_only-loadable form."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def checkpoint_path(run_dir: str | Path, kimg: float) -> Path:
    return Path(run_dir) / CKPT_DIR / checkpoint_name(kimg)


def save_checkpoint(run_dir: str | Path, kimg: float, state: dict[str, Any]) -> Path:
    """Write run_dir/checkpoints/ckpt-<kimg>.pt: temp file, fsync, rename, fsync the folder."""
    path = checkpoint_path(run_dir, kimg)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ckpt-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """With mmap, tensors stay on disk until touched: cheap when only the plain fields are wanted."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def list_checkpoints(run_dir: str | Path) -> list[tuple[float, Path]]:
    """(kimg, path) of every checkpoint file, oldest first."""
    folder = Path(run_dir) / CKPT_DIR
    found = []
    for p in folder.glob("ckpt-*.pt") if folder.exists() else []:
        m = _NAME.match(p.name)
        if m:
            found.append((float(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; a torn or unreadable one is skipped with a warning."""
    for _kimg, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # a torn file raises from zipfile, pickle or torch: all mean "unusable"
            warnings.warn(f"skipping unreadable checkpoint {path.name}: {type(e).__name__}: {e}", stacklevel=2)
    return None
