"""Decoding raw bytes into RGB, with a stable reason word for every way it can fail.

Pillow's decompression-bomb guard stays on (MAX_IMAGE_PIXELS untouched), and decode() refuses as `bomb`
anything above it (Pillow only warns between 1x and 2x). The header (size, orientation, format) is read
before any pixel: `probe()` answers size questions without decoding. With `min_side`, JPEGs decode in draft
mode (DCT scaling: 1/2..1/8 of the work) and other formats are box-reduced right after decoding, so all work
after the decode is bounded by the requested size, not the input's.
"""
from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# Never paper over truncated files: a truncated image must fail, not decode grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}
# EXIF orientation -> the transpose that shows the picture upright (as ImageOps.exif_transpose does). Applied by
# hand because a reduced image no longer carries the EXIF block.
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


class DecodeError(Exception):
    """The bytes are not a usable image; `reason` is the manifest's reason word."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Header:
    width: int               # full-size width after EXIF orientation
    height: int
    format: str
    mode: str                # mode as stored (CMYK, P, I;16, F, ...)
    frames: int
    orientation: int = 1     # EXIF orientation tag (1 = upright)


@dataclass
class Decoded:
    rgb: np.ndarray          # HxWx3 uint8, EXIF orientation applied
    width: int               # full-size width after orientation (the thumbnail may be smaller)
    height: int
    format: str
    mode: str                # mode as stored (CMYK, P, I;16, ...)
    frames: int


# Leading bytes of the formats photos come in. A file that starts like an image but that Pillow cannot
# identify is a broken image (corrupt or truncated), not a non-image such as an HTML error page.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _sniff(head: bytes) -> str | None:
    """The image format the leading bytes announce, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def _riff_cut(head: bytes, size: int) -> bool:
    """A RIFF container (WebP) whose declared length runs past the end of the file."""
    return head[:4] == b"RIFF" and len(head) >= 8 and struct.unpack("<I", head[4:8])[0] + 8 > size


def _reason_for(exc: BaseException, head: bytes = b"", size: int = 0) -> str:
    if isinstance(exc, (Image.DecompressionBombError, MemoryError)):
        return "bomb"  # too many pixels to decode safely
    if _riff_cut(head, size):
        return "truncated"  # libwebp only says "could not create decoder object"
    if isinstance(exc, UnidentifiedImageError):
        return "corrupt" if _sniff(head) else "not_image"
    if isinstance(exc, EOFError) or "truncat" in str(exc).lower():
        return "truncated"
    return "corrupt"


def _scale_top(arr: np.ndarray, mode: str) -> float:
    """The value that means white: 16-bit 65535; float images in 0..1 (TIFF, EXR exports) 1.0; else 255."""
    if mode.startswith("I;16"):
        return 65535.0
    peak = float(arr.max(initial=0))
    if mode == "F" and peak <= 1.0:
        return 1.0
    return 65535.0 if peak > 255 else 255.0


def to_rgb(img: Image.Image, stored_mode: str | None = None) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16/32-bit and float scaled, CMYK and palette
    converted. `stored_mode`: the mode before a reduction changed it (I;16 becomes I)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = _scale_top(arr, stored_mode if stored_mode and stored_mode.startswith("I;16") else img.mode)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _open_checked(path: Path):
    """Image.open with the size known and checked before any pixel is decoded."""
    img = Image.open(path)
    # mypy: never None here (the guard stays on)
    if img.size[0] * img.size[1] > Image.MAX_IMAGE_PIXELS:  # type: ignore[operator]
        img.close()
        raise DecodeError("bomb", f"{img.size[0]}x{img.size[1]} pixels is above the decompression-bomb limit "
                                  f"({Image.MAX_IMAGE_PIXELS})")
    return img


def _header(img: Image.Image) -> Header:
    w, h = img.size
    orientation = img.getexif().get(0x0112, 1)
    if orientation in _TRANSPOSED:
        w, h = h, w
    return Header(width=w, height=h, format=img.format or "?", mode=img.mode, frames=getattr(img, "n_frames", 1),
                  orientation=orientation)


def _reduce(img: Image.Image, min_side: int) -> Image.Image:
    """Box-average by the largest integer factor that keeps the short side >= min_side (no-op below 2x)."""
    k = min(img.size) // min_side
    if k < 2:
        return img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode.startswith("I;16"):
        img = img.convert("I")
    return img.reduce(k)


def _failure(path: Path, e: BaseException, size: int) -> DecodeError:
    with path.open("rb") as f:
        head = f.read(16)
    # Pillow names the file as it was opened; the manifest names it only by its file name, so it is the
    # same wherever the raw store lies (a relative path here, an absolute one on a Dask worker).
    detail = (str(e) or type(e).__name__).replace(str(path), path.name)
    reason = _reason_for(e, head, size)
    if reason == "corrupt" and isinstance(e, UnidentifiedImageError):
        detail = f"starts like {_sniff(head)} but cannot be parsed"
    return DecodeError(reason, detail)


def _nonempty(path: Path) -> int:
    size = path.stat().st_size
    if size == 0:
        raise DecodeError("empty", "zero-byte file")
    return size


@contextmanager
def _reading(path: Path) -> Iterator[Image.Image]:
    """The image file opened with the bomb guard on (its warning silenced: the guard's error is what counts);
    any failure, in opening or in the caller's decoding, is this input's DecodeError, never a crashed batch."""
    size = _nonempty(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open_checked(path) as img:
                yield img
    except DecodeError:
        raise
    except Exception as e:
        raise _failure(path, e, size) from None


def probe(path: str | Path) -> Header:
    """Size (after EXIF orientation), format, mode and frames from the header alone: no pixel is decoded.

    Raises DecodeError like decode() for what the header already shows (empty, not_image, corrupt, bomb).
    """
    with _reading(Path(path)) as img:
        return _header(img)


def decode(path: str | Path, min_side: int | None = None) -> Decoded:
    """Decode an image file to RGB; with `min_side`, decode only a thumbnail whose short side is >= it.

    Raises DecodeError with reason empty, not_image, truncated, corrupt or bomb.
    """
    with _reading(Path(path)) as img:
        head = _header(img)
        img.seek(0)  # animated: the first frame
        if min_side and head.format in ("JPEG", "MPO") and min(img.size) >= 2 * min_side:
            # Draft picks the largest DCT scale (1/2..1/8) that keeps both sides >= the request.
            k = min(img.size) / min_side
            img.draft("RGB", (math.ceil(img.size[0] / k), math.ceil(img.size[1] / k)))
        img.load()
        if min_side:
            img = _reduce(img, min_side)
        if head.orientation in _UPRIGHT:
            img = img.transpose(_UPRIGHT[head.orientation])
        rgb = np.asarray(to_rgb(img, head.mode))
    return Decoded(rgb=rgb, width=head.width, height=head.height, format=head.format, mode=head.mode,
                   frames=head.frames)


def load_rgb(path: str | Path) -> Image.Image:
    """The full-size RGB image (EXIF orientation applied), for cropping and matting."""
    return Image.fromarray(decode(path).rgb)
