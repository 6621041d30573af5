"""Local sources: a folder (recursive), a .zip or a .tar of images, copied into the raw store.

Every folder entry and archive member (tasks/ingestion/sources/archives.py) gets a provenance record. What cannot be
stored becomes a rejected record with a stable reason word instead of stopping the run (the README's Reasons
table): `unreadable`, `encrypted`, `bad_crc`, `unsupported_compression`, `corrupt_member`, `truncated`, `link`,
`special_file`, `directory` (a directory named like an image) and `bomb` (larger than
`curate.max_member_bytes`, or inflating more than `curate.max_compression_ratio`; counted while streaming,
never from the header alone).
"""
from __future__ import annotations

import functools
import os
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from tasks.ingestion.sources.archives import tar_entries, zip_entries
from tasks.ingestion.sources.entries import Entry, Refused, image_named, kind_of
from tasks.ingestion.sources.raw import RawItem, rejected_item, store_stream, write_provenance

# Members below this many inflated bytes are never called bombs for their ratio: a 40 kB flat-colour BMP
# compresses 500x and harms no one.
RATIO_FLOOR = 1 << 20


class SourceError(ValueError):
    """The input path cannot be read as a folder, a zip or a tar, or holds nothing."""


@dataclass(frozen=True)
class MemberLimits:
    max_bytes: int      # curate.max_member_bytes
    max_ratio: float    # curate.max_compression_ratio

    @classmethod
    def from_params(cls, params) -> "MemberLimits":
        return cls(max_bytes=params.max_member_bytes, max_ratio=params.max_compression_ratio)


class _Capped:
    """A read-only stream that refuses (`bomb`) as soon as more bytes come out than the caps allow."""

    def __init__(self, stream: BinaryIO, limits: MemberLimits, packed: int | None):
        self.stream, self.limits, self.packed, self.count = stream, limits, packed, 0

    def read(self, n: int = -1) -> bytes:
        try:
            chunk = self.stream.read(n if n and n > 0 else 1 << 20)
        except _MEMBER_ERRORS as e:  # a read failure is the member's; a write failure (disk full) is the run's
            raise _refusal(e) from None
        self.count += len(chunk)
        if self.count > self.limits.max_bytes:
            raise Refused("bomb", f"more than {self.limits.max_bytes} bytes (curate.max_member_bytes)")
        if self.packed is not None and self.count > RATIO_FLOOR \
                and self.count > self.limits.max_ratio * max(self.packed, 1):
            raise Refused("bomb", f"inflates more than {self.limits.max_ratio:g}x its {self.packed} compressed "
                                  "bytes (curate.max_compression_ratio)")
        return chunk


def _refusal(e: BaseException) -> Refused:
    """The reason word for an error raised while reading one member."""
    text = str(e)
    if isinstance(e, Refused):
        return e
    if isinstance(e, NotImplementedError):
        return Refused("unsupported_compression", text or "compression method not supported")
    if isinstance(e, RuntimeError) and "encrypted" in text:
        return Refused("encrypted", text)
    if isinstance(e, zipfile.BadZipFile) and "CRC" in text:
        return Refused("bad_crc", text)
    if isinstance(e, (EOFError, tarfile.ReadError)) or "end of data" in text or "truncat" in text.lower():
        return Refused("truncated", text or "the archive ends inside this member")
    if isinstance(e, (zipfile.BadZipFile, zlib.error, tarfile.TarError)):
        return Refused("corrupt_member", text)
    return Refused("unreadable", text or type(e).__name__)


# Errors reading one member or file: that entry's record, never the whole run's end.
_MEMBER_ERRORS = (Refused, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                  tarfile.TarError, zlib.error, ValueError)


def _is_tar(path: Path) -> bool:
    try:
        return path.is_file() and tarfile.is_tarfile(path)
    except OSError:
        return False


def source_kind(src: Path) -> str:
    """folder, zip or tar; SourceError (one line) for anything else."""
    if not src.exists():
        raise SourceError(f"input is a broken link: {src}" if src.is_symlink() else f"input not found: {src}")
    if src.is_dir():
        return "folder"
    if not src.is_file():
        raise SourceError(f"input must be a folder, a .zip or a .tar, not a special file: {src}")
    if not os.access(src, os.R_OK):
        raise SourceError(f"input is not readable: {src}")
    if zipfile.is_zipfile(src):
        return "zip"
    if _is_tar(src):
        return "tar"
    with src.open("rb") as f:
        if f.read(4) == b"PK\x03\x04":
            return "zip"  # a zip cut short (no central directory): its local headers are walked
    raise SourceError(f"input must be a folder, a .zip or a .tar: {src}")


def check_input(src: str | Path) -> str:
    """What `--input` must be, checked before any work: a folder, zip or tar with at least one entry."""
    src = Path(src)
    kind = source_kind(src)
    if kind == "tar":  # its first header only: listing every member would inflate a whole .tar.gz here
        try:
            with tarfile.open(src) as tf:
                empty = tf.next() is None
        except (tarfile.TarError, EOFError, OSError, zlib.error):
            empty = False  # a damaged tar is ingested as far as it reads, with a `truncated` record
    else:
        empty = next(iter(_entries(src, kind)), None) is None
    if empty:
        raise SourceError(f"input {src} holds no files: nothing to curate")
    return kind


def _entries(src: Path, kind: str) -> Iterator[Entry]:
    return {"folder": _folder_entries, "zip": zip_entries, "tar": tar_entries}[kind](src)


def ingest_path(src: Path, raw_dir: Path, limits: MemberLimits, progress: Callable[[int], None] | None = None,
                source: str | None = None) -> list[RawItem]:
    """Copy every regular file of `src` (folder, zip or tar) into `raw_dir`; one record per entry.

    `source` overrides the recorded source kind (the demo is ingested as a folder named "demo").
    """
    src = Path(src)
    kind = source_kind(src)
    label = source or kind
    items = []
    for entry in _entries(src, kind):
        items.append(_store(raw_dir, entry, label, limits))
        if progress:
            progress(1)
    if not items:
        raise SourceError(f"input {src} holds no files: nothing to curate")
    write_provenance(raw_dir, items)
    return items


def _store(raw_dir: Path, entry: Entry, source: str, limits: MemberLimits) -> RawItem:
    if entry.reason is None and entry.size is not None and entry.size > limits.max_bytes:
        entry = Entry(entry.name, reason="bomb",
                      detail=f"{entry.size} bytes is above curate.max_member_bytes ({limits.max_bytes})")
    if entry.reason is not None:
        return rejected_item(source, entry.name, entry.reason, entry.detail)
    try:
        f = entry.open()  # type: ignore[misc]  # set when reason is None
    except _MEMBER_ERRORS as e:
        refused = _refusal(e)
        return rejected_item(source, entry.name, refused.reason, refused.detail)
    try:
        with f:
            # mypy: _Capped is read like a BinaryIO
            return store_stream(raw_dir, _Capped(f, limits, entry.packed), source, entry.name)  # type: ignore[arg-type]
    except Refused as e:
        return rejected_item(source, entry.name, e.reason, e.detail)


# ---- folder ------------------------------------------------------------------------------------


def _open_regular(path: Path) -> BinaryIO:
    # O_NOFOLLOW | O_NONBLOCK: a file swapped for a link or a FIFO after the listing is refused, never followed
    # or waited on.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise Refused("special_file", "not a regular file when opened")
    return f


def _folder_entries(src: Path, rel: str = "") -> Iterator[Entry]:
    try:
        with os.scandir(src) as it:
            found = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield Entry(rel or ".", reason="unreadable", detail=f"cannot list the folder: {e.strerror or e}")
        return
    for d in found:
        name = f"{rel}/{d.name}" if rel else d.name
        try:
            st = d.stat(follow_symlinks=False)
        except OSError as e:
            yield Entry(name, reason="unreadable", detail=str(e.strerror or e))
            continue
        if stat.S_ISLNK(st.st_mode):  # never followed: it can point outside the folder the user named
            yield Entry(name, reason="link", detail=f"symbolic link to {os.readlink(d.path)!r}, not followed")
        elif stat.S_ISDIR(st.st_mode):
            if image_named(d.name):
                yield Entry(name, reason="directory", detail="a directory named like an image")
            yield from _folder_entries(Path(d.path), name)
        elif stat.S_ISREG(st.st_mode):
            if not os.access(d.path, os.R_OK):
                yield Entry(name, reason="unreadable", detail="permission denied")
            else:
                yield Entry(name, open=functools.partial(_open_regular, Path(d.path)), size=st.st_size)
        else:
            yield Entry(name, reason="special_file", detail=f"{kind_of(st.st_mode)}, not a regular file")
