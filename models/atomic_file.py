"""How ganflow publishes a file: never over something it did not write, never half-written, never left in pieces.

One rule for every output file (checkpoints, best.pt, `ganflow import`'s network, generate's PNGs, morph's GIF
and MP4), in `publish(path, write, owned, what)`:
- the target, when present, must be a regular file (never a link, a folder, a FIFO or a device) that `owned`
  recognizes as one ganflow wrote (a torch file with its architecture record, a PNG, a GIF with ganflow's comment);
- the bytes go to a temp file beside it (`.NAME.XXXXXXXX.ganflow-tmp.SUFFIX`), locked while written, fsynced, renamed over
  the target, and the folder fsynced: a reader sees the old file or the whole new one;
- a temp file whose writer died (SIGKILL, power cut: its lock is gone) is removed by the next publish in that
  folder, so a rerun leaves none behind;
- a full disk is one OSError naming the path, the bytes needed and the bytes free (torch buries it under a
  RuntimeError of its zip writer; the OSError is found in the chain).
"""
from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable

TMP_SUFFIX = ".ganflow-tmp"


class OutputError(ValueError):
    """A path ganflow must not write: a file it did not write, a link, a folder, a special file."""


class DiskFullError(OSError):
    """The disk (or quota) ran out while writing `path`: said once, with the bytes needed."""


def _size(n: int) -> str:
    if n < 1000:
        return f"{n:,} bytes"
    value, units = n / 1000, ["KB", "MB", "GB", "TB"]
    while value >= 1000 and len(units) > 1:
        value, units = value / 1000, units[1:]
    return f"{value:.1f} {units[0]}"


def check_replaceable(path: Path, owned: Callable[[Path], bool] | None, what: str) -> None:
    """Refuse `path` unless it is missing or a regular file `owned` recognizes (None: any regular file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(f"{path} is a link: ganflow writes {what} only as a regular file it owns, never through "
                          "a link; choose another name")
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a special file (device, FIFO or socket)"
        raise OutputError(f"{path} is {kind}, not {what}: choose another name")
    if owned is not None and not owned(path):
        raise OutputError(f"{path} exists and is not {what} ganflow wrote: choose a new name (ganflow never "
                          "replaces a file it did not write)")


def is_png(path: Path) -> bool:
    """A PNG (generate's images, the sample grids): a file of another kind under such a name is never replaced."""
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove this folder's temp files whose writer is gone (its lock released); returns them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not (entry.name.startswith(".") and TMP_SUFFIX in entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live writer holds it
        except OSError:
            os.close(fd)
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def disk_full_in(e: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError in e's chain (torch raises a RuntimeError over it), or None."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 20:
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return cur
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return None


def disk_full_error(path: Path, needed: int | None) -> DiskFullError:
    try:
        free = shutil.disk_usage(path.parent).free
        have = f", {_size(free)} free"
    except OSError:
        have = ""
    need = f" (about {_size(needed)} needed{have})" if needed else f" ({have.lstrip(', ')})" if have else ""
    return DiskFullError(errno.ENOSPC, f"{path}: the disk is full{need}; free space and run the same command again")


def publish(path: str | Path, write: Callable[[Path], None], owned: Callable[[Path], bool] | None = None,
            what: str = "a file", needed: int | None = None) -> Path:
    """Write `path` by calling write(temp_path), then rename it into place (see the module docstring).
    `needed`: the expected size, for the disk-full message."""
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    check_replaceable(path, owned, what)
    remove_stale_temps(folder)
    # the target's suffix last: writers that choose a format by it (OpenCV's MP4) see the right one
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}{path.suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until renamed: remove_stale_temps leaves a live writer's file alone
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        check_replaceable(path, owned, what)  # again: something may have appeared there meanwhile
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        full = disk_full_in(e)
        if full is not None:
            raise disk_full_error(path, needed) from None
        raise
    finally:
        os.close(fd)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return path
