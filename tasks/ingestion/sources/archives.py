"""Zip and tar members as entries: every member one entry, whatever it is; nothing is followed or extracted."""
from __future__ import annotations

import functools
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from tasks.ingestion.sources.entries import Entry, Refused, image_named, kind_of

# Zip compression methods Python can inflate: stored, deflate, bzip2, lzma (deflate64, 9, cannot).
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _zip_entry(info: zipfile.ZipInfo, opener: Callable[[], BinaryIO]) -> Entry | None:
    name = info.filename
    mode = info.external_attr >> 16
    if info.is_dir():
        return Entry(name, reason="directory", detail="a directory named like an image") \
            if image_named(name) else None
    if stat.S_ISLNK(mode):
        return Entry(name, reason="link", detail="symbolic link member, not followed")
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return Entry(name, reason="special_file", detail=f"{kind_of(mode)} member")
    if info.flag_bits & 0x1:
        return Entry(name, reason="encrypted", detail="password-protected member")
    if info.compress_type not in _ZIP_METHODS:
        method = f"{info.compress_type} (deflate64)" if info.compress_type == 9 else str(info.compress_type)
        return Entry(name, reason="unsupported_compression", detail=f"compression method {method} is not supported")
    return Entry(name, open=opener, packed=info.compress_size, size=info.file_size)


def zip_entries(src: Path) -> Iterator[Entry]:
    if not zipfile.is_zipfile(src):
        yield from _zip_local_entries(src)
        return
    with zipfile.ZipFile(src) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            # mypy: zf.open gives a ZipExtFile, read like a BinaryIO
            entry = _zip_entry(info, functools.partial(zf.open, info))  # type: ignore[arg-type]
            if entry is not None:
                yield entry


_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # signature, version, flags, method, time, date, crc, sizes, name/extra


def _open_local(src: Path, start: int, info: zipfile.ZipInfo) -> BinaryIO:
    f = src.open("rb")
    f.seek(start)
    # mypy: a ZipExtFile is read like a BinaryIO
    return zipfile.ZipExtFile(f, "r", info, close_fileobj=True)  # type: ignore[return-value]  # inflates, checks the CRC, stops at file_size


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
            if image_named(m.name) else None
    kind = "a FIFO" if m.isfifo() else "a device" if m.ischr() or m.isblk() else "a special file"
    return Entry(m.name, reason="special_file", detail=f"{kind} member, not a regular file")


def _tar_open(tf: tarfile.TarFile, m: tarfile.TarInfo) -> BinaryIO:
    f = tf.extractfile(m)
    if f is None:
        raise Refused("special_file", "no data")
    return f  # type: ignore[return-value]  # an IO[bytes], read like a BinaryIO


def tar_entries(src: Path) -> Iterator[Entry]:
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
