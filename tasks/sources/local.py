"""Local sources: a folder (recursive), a .zip or a .tar of images, copied into the raw store."""
from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path
from typing import Callable

from tasks.sources.raw import RawItem, store_stream, write_provenance


class SourceError(ValueError):
    """The input path cannot be read as a folder, a zip or a tar."""


def _is_tar(path: Path) -> bool:
    return path.is_file() and tarfile.is_tarfile(path)


def ingest_path(src: Path, raw_dir: Path, progress: Callable[[int], None] | None = None,
                source: str | None = None) -> list[RawItem]:
    """Copy every regular file of `src` (folder, zip or tar) into `raw_dir`; one record per file.

    `source` overrides the recorded source kind (the demo is ingested as a folder named "demo").
    """
    src = Path(src)
    if not src.exists():
        raise SourceError(f"input not found: {src}")
    if src.is_dir():
        items = _ingest_folder(src, raw_dir, progress, source or "folder")
    elif zipfile.is_zipfile(src):
        items = _ingest_zip(src, raw_dir, progress, source or "zip")
    elif _is_tar(src):
        items = _ingest_tar(src, raw_dir, progress, source or "tar")
    else:
        raise SourceError(f"input must be a folder, a .zip or a .tar: {src}")
    write_provenance(raw_dir, items)
    return items


def _ingest_folder(src: Path, raw_dir: Path, progress, kind: str) -> list[RawItem]:
    items = []
    # Symlinks are skipped on purpose: they can point outside the folder the user named.
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        with path.open("rb") as f:
            items.append(store_stream(raw_dir, f, kind, path.relative_to(src).as_posix()))
        if progress:
            progress(1)
    return items


def _ingest_zip(src: Path, raw_dir: Path, progress, kind: str) -> list[RawItem]:
    items = []
    with zipfile.ZipFile(src) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            with zf.open(info) as f:
                items.append(store_stream(raw_dir, f, kind, info.filename))
            if progress:
                progress(1)
    return items


def _ingest_tar(src: Path, raw_dir: Path, progress, kind: str) -> list[RawItem]:
    items = []
    with tarfile.open(src) as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            if not member.isfile():  # links and devices are never followed
                continue
            f = tf.extractfile(member)
            if f is None:
                continue
            with f:
                items.append(store_stream(raw_dir, f, kind, member.name))
            if progress:
                progress(1)
    return items
