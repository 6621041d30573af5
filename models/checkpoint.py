"""Full-state checkpoints: written atomically, loaded with weights_only=True, newest loadable wins.

Everything in a checkpoint is tensors, numbers, strings, lists and dicts, so the safe unpickler reads it
(no pickled classes or code). RNG states are converted to that form here.
"""
from __future__ import annotations

import os
import random
import stat
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.atomic_file import publish
from models.run_dir import RunDir


def rng_state() -> dict[str, Any]:
    """torch, numpy and python RNG states in weights_only-loadable form."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np.asarray(np_keys, np.int64)), "pos": int(np_pos),
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
    return RunDir(run_dir).checkpoint(kimg)


def is_ganflow_file(path: str | Path) -> bool:
    """A torch file ganflow wrote (a checkpoint, best.pt, `ganflow import`'s network): it loads with
    weights_only (tensors mapped, not read) as a dict that records its architecture. What save_atomic may replace."""
    try:
        state = load_checkpoint(path, mmap=True, follow_links=False)
    except (CheckpointError, OSError):
        return False
    return isinstance(state.get("arch"), dict)


def _tensor_bytes(state: Any) -> int:
    """The bytes of the tensors in a (nested) state: about what torch.save writes."""
    total, stack, seen = 0, [state], 0
    while stack and seen < 1_000_000:
        x, seen = stack.pop(), seen + 1
        if isinstance(x, torch.Tensor):
            total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return total


def save_atomic(state: dict[str, Any], path: str | Path) -> Path:
    """torch.save(state) to `path` by models.atomic_file.publish: a reader sees the old file or the whole new one,
    and a file there that ganflow did not write (is_ganflow_file), a link or a special file is never replaced.
    A file object, not a path: the bytes do not depend on the name."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()

    return publish(path, write, owned=is_ganflow_file, what="a ganflow network or checkpoint file",
                   needed=_tensor_bytes(state))


def save_checkpoint(run_dir: str | Path, kimg: float, state: dict[str, Any]) -> Path:
    """Write run_dir/checkpoints/ckpt-<kimg>.pt atomically (save_atomic)."""
    return save_atomic(state, checkpoint_path(run_dir, kimg))


class CheckpointError(ValueError):
    """A file that is not a readable ganflow checkpoint (planted pickle, torn, empty, a folder, a FIFO)."""


def open_regular(path: str | Path, follow_links: bool = True):
    """A binary file object for `path`, refused unless it is a regular file: O_NONBLOCK so a FIFO named like a
    checkpoint cannot block the open, fstat on the opened descriptor so what is checked is what is read, and
    O_NOFOLLOW when links must not be followed."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise CheckpointError(f"{path} cannot be opened ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def load_checkpoint(path: str | Path, mmap: bool = False, follow_links: bool = True) -> dict[str, Any]:
    """A checkpoint's dict, loaded with weights_only=True; anything else is a one-line CheckpointError naming the
    file. With mmap, tensors stay on disk until touched: cheap when only the plain fields are wanted."""
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol note: the error below says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if mmap:  # torch maps a path, not a file object: check it is a regular file first
                open_regular(path).close()
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            else:
                with open_regular(path, follow_links) as f:
                    state = torch.load(f, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # the safe unpickler's refusal, a torn zip, an empty file: all mean "not a checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint ({_why(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a ganflow checkpoint (it holds a {type(state).__name__}, not a dict)")
    return state


def _why(e: Exception) -> str:
    """One short line about a load failure; the unpickler's refusal names the global it refused."""
    first = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
    first = first or (str(e).splitlines() or [""])[0].strip()
    return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def list_checkpoints(run_dir: str | Path) -> list[tuple[float, Path]]:
    """(kimg, path) of every checkpoint file, oldest first."""
    return RunDir(run_dir).checkpoint_files()


def latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads; a torn or unreadable one is skipped with a warning."""
    for _kimg, path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint: {e}", stacklevel=2)
    return None
