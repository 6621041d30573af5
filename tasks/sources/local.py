"""Local sources: a folder (recursive), a .zip or a .tar of images, copied into the raw store."""
from __future__ import annotations

import functools
import tarfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

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
        entries, kind = _folder_entries(src), "folder"
    elif zipfile.is_zipfile(src):
        entries, kind = _zip_entries(src), "zip"
    elif _is_tar(src):
        entries, kind = _tar_entries(src), "tar"
    else:
        raise SourceError(f"input must be a folder, a .zip or a .tar: {src}")
    items = []
    for name, opener in entries:
        with opener() as f:
            items.append(store_stream(raw_dir, f, source or kind, name))
        if progress:
            progress(1)
    write_provenance(raw_dir, items)
    return items


# Each source yields (name, open) pairs in a stable order; the store reads each one as a stream.
Entries = Iterator[tuple[str, Callable[[], BinaryIO]]]


def _folder_entries(src: Path) -> Entries:
    # Symlinks are skipped on purpose: they can point outside the folder the user named.
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink()):
        yield path.relative_to(src).as_posix(), functools.partial(path.open, "rb")


def _zip_entries(src: Path) -> Entries:
    with zipfile.ZipFile(src) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if not info.is_dir():
                yield info.filename, functools.partial(zf.open, info)


def _tar_entries(src: Path) -> Entries:
    with tarfile.open(src) as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            if member.isfile():  # links and devices are never followed
                yield member.name, functools.partial(tf.extractfile, member)
