"""A curated dataset is replaced whole or not at all: the new version is written in a folder beside the old one
and switched in with one rename, so a reader (training, DVC) sees the old dataset or the new one, never a mix.

    data/curated/.photos.1a2b3c4d.ganflow-new/   the version being written (locked by its writer)
    data/curated/photos/                         the published one

The switch exchanges the two folders atomically (Linux renameat2 RENAME_EXCHANGE); where a filesystem cannot,
the old folder is renamed aside first (for an instant the dataset is absent, never mixed). A writer killed at any
point (SIGKILL, disk full, power cut) leaves the old dataset published; the next write into that folder removes the
leftover folders whose writer is gone (their lock released) and puts back an old version renamed aside.

Files of the new version with the old one's bytes are hard links to the old files (same inode and mtime: an
identical rerun rewrites nothing, and DVC sees nothing changed); files in the old folder that ganflow did not
write are linked into the new version, so the switch never deletes them.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import filecmp
import os
import re
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

_NEW, _OLD = ".ganflow-new", ".ganflow-old"


def _leftover_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(out.name)}\.[0-9a-f]{{8}}({re.escape(_NEW)}|{re.escape(_OLD)})")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders' names in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _lock(folder: Path) -> int | None:
    """An exclusive lock on the folder, taken without waiting; None when another live process holds it."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def clean_leftovers(out: Path) -> None:
    """Remove the version folders of `out` whose writer is gone; an old version renamed aside while `out` is
    absent (a switch interrupted between its two renames) is put back first."""
    pattern = _leftover_pattern(out)
    try:
        entries = sorted(os.scandir(out.parent), key=lambda e: not e.name.endswith(_OLD))  # old ones first
    except FileNotFoundError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        fd = _lock(Path(entry.path))
        if fd is None:
            continue  # a live writer's
        try:
            if entry.name.endswith(_OLD) and not os.path.lexists(out):
                os.rename(entry.path, out)  # the published dataset, back where it was
            else:
                shutil.rmtree(entry.path)
        finally:
            os.close(fd)


class Version:
    """The folder a new version is written in, and how it is switched in (see the module docstring)."""

    def __init__(self, out: Path, folder: Path) -> None:
        self.out, self.folder = out, folder

    def reuse_if_same(self, rel: str) -> None:
        """When the old version holds `rel` with the same bytes, use the old file (a hard link) instead."""
        old, new = self.out / rel, self.folder / rel
        try:
            if stat.S_ISREG(os.lstat(old).st_mode) and old.stat().st_size == new.stat().st_size and \
                    filecmp.cmp(old, new, shallow=False):
                tmp = new.with_name(new.name + ".link")
                os.link(old, tmp)
                os.replace(tmp, new)
        except OSError:
            pass  # no old file, or links not allowed here: the new copy stays

    def _unchanged(self, ours: Callable[[str], bool]) -> bool:
        """Every file of the new version is the old one (same inode), and the old one has no other file of ours."""
        if not self.out.is_dir():
            return False
        new = {p.relative_to(self.folder).as_posix(): p for p in _entries(self.folder) if _is_file(p)}
        old = {p.relative_to(self.out).as_posix() for p in _entries(self.out)
               if _is_file(p) and ours(p.relative_to(self.out).as_posix())}
        return set(new) == old and all(os.path.samefile(p, self.out / rel) for rel, p in new.items())

    def _carry_foreign(self, ours: Callable[[str], bool]) -> None:
        """Link what the old folder holds that ganflow did not write into the new version (never deleted)."""
        if not self.out.is_dir():
            return
        for src in _entries(self.out):
            rel = src.relative_to(self.out).as_posix()
            if ours(rel):
                continue
            dst = self.folder / rel
            if os.path.lexists(dst):
                continue
            mode = os.lstat(src).st_mode
            dst.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(src), dst)
            elif stat.S_ISDIR(mode):
                dst.mkdir()
            elif stat.S_ISREG(mode):
                try:
                    os.link(src, dst)
                except OSError:  # a filesystem without hard links: a copy keeps it just as well
                    shutil.copy2(src, dst)
            elif stat.S_ISFIFO(mode):
                os.mkfifo(dst, stat.S_IMODE(mode))
            else:
                raise OSError(errno.EPERM, f"{src} is a device or socket ganflow cannot keep while it replaces the "
                                           "dataset around it: move it out of the dataset folder", str(src))

    def publish(self, ours: Callable[[str], bool]) -> None:
        """Switch the new version in (nothing happens when it is the old one, file for file)."""
        if self._unchanged(ours):
            return
        self._carry_foreign(ours)
        _fsync_tree(self.folder)
        if not os.path.lexists(self.out):
            os.rename(self.folder, self.out)
        elif _exchange(self.folder, self.out):
            shutil.rmtree(self.folder)  # now the old version
        else:
            aside = self.out.parent / f".{self.out.name}.{secrets.token_hex(4)}{_OLD}"
            os.rename(self.out, aside)
            os.rename(self.folder, self.out)
            shutil.rmtree(aside)
        _fsync(self.out.parent)


def _entries(folder: Path) -> list[Path]:
    """Everything under `folder`, parents before children, links not followed."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        found += [Path(root) / n for n in sorted(dirs) + sorted(files)]
    return sorted(found)


def _is_file(p: Path) -> bool:
    return stat.S_ISREG(os.lstat(p).st_mode)


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """The new version's folders reach the disk before the switch names them (the files were fsynced as written)."""
    for d in [folder, *(p for p in _entries(folder) if stat.S_ISDIR(os.lstat(p).st_mode))]:
        _fsync(d)


@contextmanager
def new_version(out: str | Path) -> Iterator[Version]:
    """A locked, empty folder beside `out` to write the new version in; removed unless published."""
    out = Path(os.path.realpath(out))  # a link to the dataset's folder: the folder is what is replaced
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    if os.path.isdir(out) and not any(os.scandir(out)):
        os.rmdir(out)  # an empty folder is no dataset to keep: the new version takes its name
    folder = out.parent / f".{out.name}.{secrets.token_hex(4)}{_NEW}"
    folder.mkdir()
    fd = _lock(folder)
    try:
        yield Version(out, folder)
    finally:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)
