"""Local sources: a folder (recursive), a .zip or a .tar of images, copied into the raw store.

Every folder entry and archive member gets a provenance record. What cannot be stored becomes a rejected
record with a stable reason word instead of stopping the run (the README's Reasons table):
`unreadable`, `encrypted`, `bad_crc`, `unsupported_compression`, `truncated`, `link`, `special_file`,
`directory` (a directory named like an image) and `bomb` (larger than `curate.max_member_bytes`, or
inflating more than `curate.max_compression_ratio`; counted while streaming, never from the header alone).
"""
from __future__ import annotations

import functools
import os
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from tasks.sources.raw import RawItem, rejected_item, store_stream, write_provenance

# Members below this many inflated bytes are never called bombs for their ratio: a 40 kB flat-colour BMP
# compresses 500x and harms no one.
RATIO_FLOOR = 1 << 20
# Directory names that look like an image file: recorded (`directory`) so a user sees why "x.jpg" is missing.
_IMAGE_NAME = re.compile(r".*\.(jpe?g|png|gif|webp|tiff?|bmp|heic|avif|jfif)$", re.IGNORECASE)
# Zip compression methods Python can inflate: stored, deflate, bzip2, lzma (deflate64, 9, cannot).
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


class SourceError(ValueError):
    """The input path cannot be read as a folder, a zip or a tar, or holds nothing."""


@dataclass(frozen=True)
class MemberLimits:
    max_bytes: int      # curate.max_member_bytes
    max_ratio: float    # curate.max_compression_ratio

    @classmethod
    def from_params(cls, params) -> "MemberLimits":
        return cls(max_bytes=params.max_member_bytes, max_ratio=params.max_compression_ratio)


class Refused(Exception):
    """This entry cannot be stored; `reason` is its manifest reason word."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Entry:
    name: str
    open: Callable[[], BinaryIO] | None = None   # None when the entry is refused up front
    reason: str | None = None
    detail: str = ""
    packed: int | None = None                    # compressed size (zip), for the ratio cap
    size: int | None = None                      # size as the header or the file system says


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
    return {"folder": _folder_entries, "zip": _zip_entries, "tar": _tar_entries}[kind](src)


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
        f = entry.open()
    except _MEMBER_ERRORS as e:
        refused = _refusal(e)
        return rejected_item(source, entry.name, refused.reason, refused.detail)
    try:
        with f:
            return store_stream(raw_dir, _Capped(f, limits, entry.packed), source, entry.name)
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
            if _IMAGE_NAME.fullmatch(d.name):
                yield Entry(name, reason="directory", detail="a directory named like an image")
            yield from _folder_entries(Path(d.path), name)
        elif stat.S_ISREG(st.st_mode):
            if not os.access(d.path, os.R_OK):
                yield Entry(name, reason="unreadable", detail="permission denied")
            else:
                yield Entry(name, open=functools.partial(_open_regular, Path(d.path)), size=st.st_size)
        else:
            yield Entry(name, reason="special_file", detail=f"{_kind_of(st.st_mode)}, not a regular file")


def _kind_of(mode: int) -> str:
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return word
    return "a special file"


# ---- zip ---------------------------------------------------------------------------------------


def _zip_entry(info: zipfile.ZipInfo, opener: Callable[[], BinaryIO]) -> Entry | None:
    name = info.filename
    mode = info.external_attr >> 16
    if info.is_dir():
        return Entry(name, reason="directory", detail="a directory named like an image") \
            if _IMAGE_NAME.fullmatch(name.rstrip("/").rsplit("/", 1)[-1]) else None
    if stat.S_ISLNK(mode):
        return Entry(name, reason="link", detail="symbolic link member, not followed")
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return Entry(name, reason="special_file", detail=f"{_kind_of(mode)} member")
    if info.flag_bits & 0x1:
        return Entry(name, reason="encrypted", detail="password-protected member")
    if info.compress_type not in _ZIP_METHODS:
        method = f"{info.compress_type} (deflate64)" if info.compress_type == 9 else str(info.compress_type)
        return Entry(name, reason="unsupported_compression", detail=f"compression method {method} is not supported")
    return Entry(name, open=opener, packed=info.compress_size, size=info.file_size)


def _zip_entries(src: Path) -> Iterator[Entry]:
    if not zipfile.is_zipfile(src):
        yield from _zip_local_entries(src)
        return
    with zipfile.ZipFile(src) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            entry = _zip_entry(info, functools.partial(zf.open, info))
            if entry is not None:
                yield entry


_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra


def _open_local(src: Path, start: int, info: zipfile.ZipInfo) -> BinaryIO:
    f = src.open("rb")
    f.seek(start)
    return zipfile.ZipExtFile(f, "r", info, close_fileobj=True)  # inflates, checks the CRC, stops at file_size


def _zip_local_entries(src: Path) -> Iterator[Entry]:
    """A zip cut short has no central directory: walk its local headers and keep every complete member; what
    the cut took is one `truncated` record."""
    total, pos, found = src.stat().st_size, 0, []
    with src.open("rb") as f:
        while True:
            f.seek(pos)
            raw = f.read(_LOCAL_HEADER.size)
            if len(raw) < _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
                break
            _, _, flags, method, _, _, crc, packed, size, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
            name_bytes = f.read(name_len)
            start = pos + _LOCAL_HEADER.size + name_len + extra_len
            if len(name_bytes) < name_len:
                break
            name = name_bytes.decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
            if flags & 0x8 or start + packed > total:  # sizes only after the data, or data cut: stop here
                found.append(Entry(name, reason="truncated", detail="the zip ends inside this member"))
                break
            info = zipfile.ZipInfo(name)
            info.flag_bits, info.compress_type, info.CRC = flags, method, crc
            info.compress_size, info.file_size = packed, size
            entry = _zip_entry(info, functools.partial(_open_local, src, start, info))
            if entry is not None:
                found.append(entry)
            pos = start + packed
    yield from sorted(found, key=lambda e: e.name)
    yield Entry(f"{src.name} (after {len(found)} members)", reason="truncated",
                detail="the zip has no central directory: it was cut short or damaged")


# ---- tar ---------------------------------------------------------------------------------------


def _tar_entry(tf: tarfile.TarFile, m: tarfile.TarInfo) -> Entry | None:
    if m.isfile():
        return Entry(m.name, open=functools.partial(_tar_open, tf, m), size=m.size)
    if m.issym() or m.islnk():  # never followed
        return Entry(m.name, reason="link", detail=f"link to {m.linkname!r}, not followed")
    if m.isdir():
        return Entry(m.name, reason="directory", detail="a directory named like an image") \
            if _IMAGE_NAME.fullmatch(m.name.rstrip("/").rsplit("/", 1)[-1]) else None
    kind = "a FIFO" if m.isfifo() else "a device" if m.ischr() or m.isblk() else "a special file"
    return Entry(m.name, reason="special_file", detail=f"{kind} member, not a regular file")


def _tar_open(tf: tarfile.TarFile, m: tarfile.TarInfo) -> BinaryIO:
    f = tf.extractfile(m)
    if f is None:
        raise Refused("special_file", "no data")
    return f


def _tar_entries(src: Path) -> Iterator[Entry]:
    with tarfile.open(src) as tf:
        members, cut = [], None
        try:
            for m in tf:  # one header at a time: a truncated archive keeps what came before the cut
                members.append(m)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            cut = str(e) or type(e).__name__
        for m in sorted(members, key=lambda m: m.name):
            entry = _tar_entry(tf, m)
            if entry is not None:
                yield entry
        if cut is not None:
            yield Entry(f"{src.name} (after {len(members)} members)", reason="truncated",
                        detail=f"the archive cannot be read past here: {cut}")
