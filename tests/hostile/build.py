"""Builders for the hostile corpus: crafted images, archives and folders, made at test time (nothing binary in git).

Each builder writes real files with Pillow, zipfile, tarfile and os, and patches bytes by hand where the
standard writers refuse (an encrypted flag, a deflate64 method, a bad CRC).
"""
from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image


# ---- images ------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def strip_png(width: int, height: int) -> bytes:
    """A valid 8-bit RGB PNG of width x height black pixels, compressed row by row (never whole in memory)."""
    z = zlib.compressobj(9)
    row = b"\x00" + bytes(3 * width)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def photo_jpeg(name: str = "rocket", quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(getattr(skimage.data, name)()).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def float_tiff() -> tuple[bytes, np.ndarray]:
    """A 32-bit float TIFF with values in 0..1 (how scientific and HDR tools export), and the 8-bit truth."""
    camera = skimage.data.camera()
    buf = io.BytesIO()
    Image.fromarray(camera.astype(np.float32) / 255.0, "F").save(buf, "TIFF")
    return buf.getvalue(), camera


# ---- zip ---------------------------------------------------------------------------------------


def _patch_zip(data: bytes, member: str, local_off: int, central_off: int, value: bytes) -> bytes:
    """Overwrite a field of `member`'s local header and its central-directory entry."""
    out = bytearray(data)
    name = member.encode()
    local = out.index(b"PK\x03\x04")
    while out[local + 30:local + 30 + len(name)] != name:
        local = out.index(b"PK\x03\x04", local + 4)
    central = out.index(b"PK\x01\x02")
    while out[central + 46:central + 46 + len(name)] != name:
        central = out.index(b"PK\x01\x02", central + 4)
    out[local + local_off:local + local_off + len(value)] = value
    out[central + central_off:central + central_off + len(value)] = value
    return bytes(out)


def hostile_zip(path: Path, bomb_bytes: int = 20 << 20) -> dict[str, str | None]:
    """A zip with one good photo and one member per way a member can fail; returns name -> expected reason."""
    good = photo_jpeg()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("good.jpg", good, compress_type=zipfile.ZIP_STORED)
        zf.writestr("encrypted.jpg", good, compress_type=zipfile.ZIP_STORED)
        zf.writestr("bad-crc.jpg", good, compress_type=zipfile.ZIP_STORED)
        zf.writestr("deflate64.jpg", good, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("ratio-bomb.png", bytes(bomb_bytes), compress_type=zipfile.ZIP_DEFLATED)
        link = zipfile.ZipInfo("link.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        fifo = zipfile.ZipInfo("fifo.jpg")
        fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(fifo, b"")
        zf.writestr("album.jpg/", b"")           # a directory named like an image
        zf.writestr("plain dir/", b"")           # a container: no record
    data = path.read_bytes()
    data = _patch_zip(data, "encrypted.jpg", 6, 8, struct.pack("<H", 0x1))      # general-purpose flag bit 0
    data = _patch_zip(data, "deflate64.jpg", 8, 10, struct.pack("<H", 9))       # method 9 = deflate64
    # Flip one byte in bad-crc.jpg's stored data (after its local header and name).
    out = bytearray(data)
    name = b"bad-crc.jpg"
    at = out.index(name) + len(name)  # the first occurrence is the local header's; stored data follows
    out[at + 1000] ^= 0xFF
    path.write_bytes(bytes(out))
    return {"good.jpg": None, "encrypted.jpg": "encrypted", "bad-crc.jpg": "bad_crc",
            "deflate64.jpg": "unsupported_compression", "ratio-bomb.png": "bomb", "link.jpg": "link",
            "fifo.jpg": "special_file", "album.jpg": "directory"}


def big_member_zip(path: Path, size: int) -> None:
    """A zip whose one member is `size` bytes of noise (incompressible: a size bomb, not a ratio bomb)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("huge.png", np.random.default_rng(0).bytes(size), compress_type=zipfile.ZIP_DEFLATED)


def lying_zip(path: Path, real: int = 3 << 20) -> None:
    """A member whose headers claim 1000 bytes while its deflate stream inflates to `real` bytes."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("liar.png", bytes(real), compress_type=zipfile.ZIP_DEFLATED)
    data = path.read_bytes()
    path.write_bytes(_patch_zip(data, "liar.png", 22, 24, struct.pack("<I", 1000)))


# ---- tar ---------------------------------------------------------------------------------------


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def truncated_tar(path: Path) -> dict[str, str | None]:
    """Two good photos, then a third cut in the middle of its data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        _add(tf, "a.jpg", photo_jpeg("rocket"))
        _add(tf, "b.jpg", photo_jpeg("chelsea"))
        _add(tf, "c.jpg", photo_jpeg("coffee"))
    data = buf.getvalue()
    cut = data.index(b"c.jpg") + 512 + 5000  # inside c.jpg's data
    path.write_bytes(data[:cut])
    return {"a.jpg": "ok", "b.jpg": "ok", "c.jpg": "truncated"}


def truncated_targz(path: Path) -> None:
    """A gzip-compressed tar cut in the middle: the gzip stream ends early."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        _add(tf, "a.jpg", photo_jpeg("rocket"))
        _add(tf, "b.jpg", np.random.default_rng(1).bytes(400_000))
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 3 // 4])


def special_tar(path: Path) -> dict[str, str | None]:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        _add(tf, "good.jpg", photo_jpeg())
        for name, kind in (("fifo.jpg", tarfile.FIFOTYPE), ("dev.jpg", tarfile.CHRTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            tf.addfile(info)
        d = tarfile.TarInfo("album.png")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
    return {"good.jpg": None, "fifo.jpg": "special_file", "dev.jpg": "special_file", "album.png": "directory"}


# ---- folder ------------------------------------------------------------------------------------


def hostile_folder(root: Path, outside: Path) -> dict[str, str | None]:
    """A folder with a good photo, its exact copy, a link out, a FIFO, a directory named like an image and
    images of hostile shapes; returns name -> expected manifest reason (None = accepted)."""
    root.mkdir(parents=True)
    outside.mkdir(parents=True, exist_ok=True)
    (root / "rocket.jpg").write_bytes(photo_jpeg("rocket"))
    (root / "rocket2.jpg").write_bytes(photo_jpeg("rocket"))  # an exact copy, named after the original
    small = Image.fromarray(skimage.data.rocket()).resize((620, 414), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=80)
    (root / "rocket-smaller.jpg").write_bytes(buf.getvalue())  # a near-duplicate, smaller
    (outside / "secret.jpg").write_bytes(photo_jpeg("chelsea"))
    os.symlink(outside / "secret.jpg", root / "link.jpg")
    os.mkfifo(root / "pipe.jpg")
    (root / "album.jpg").mkdir()
    (root / "album.jpg" / "inside.png").write_bytes(strip_png(299999, 1))
    (root / "strip-300000x1.png").write_bytes(strip_png(300000, 1))
    (root / "strip-100000x10.png").write_bytes(strip_png(100000, 10))
    (root / "strip-20000x500.png").write_bytes(strip_png(20000, 500))
    tiff, _ = float_tiff()
    (root / "float.tif").write_bytes(tiff)
    return {"rocket.jpg": None, "rocket2.jpg": "duplicate", "rocket-smaller.jpg": "duplicate", "link.jpg": "link", "pipe.jpg": "special_file",
            "album.jpg": "directory", "album.jpg/inside.png": "too_small", "strip-300000x1.png": "too_small",
            "strip-100000x10.png": "too_small", "strip-20000x500.png": "aspect", "float.tif": "grayscale"}
