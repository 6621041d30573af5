"""Decoding raw bytes into RGB, with a stable reason word for every way it can fail.

Pillow's decompression-bomb guard stays on (MAX_IMAGE_PIXELS untouched). Cheap checks decode a
thumbnail in JPEG draft mode (DCT scaling: 1/2..1/8 of the work) instead of the full image.
"""
from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Never paper over truncated files: a truncated image must fail, not decode grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# EXIF orientations that swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


class DecodeError(Exception):
    """The bytes are not a usable image; `reason` is the manifest's reason word."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16/32-bit scaled, CMYK and palette converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
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


def decode(path: str | Path, min_side: int | None = None) -> Decoded:
    """Decode an image file to RGB; with `min_side`, decode only a thumbnail whose short side is >= it.

    Raises DecodeError with reason empty, not_image, truncated, corrupt or bomb.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DecodeError("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt, stored_mode = img.format or "?", img.mode
                frames = getattr(img, "n_frames", 1)
                img.seek(0)  # animated: the first frame
                orientation = img.getexif().get(0x0112, 1)
                w, h = img.size
                if orientation in _TRANSPOSED:
                    w, h = h, w
                if min_side and fmt in ("JPEG", "MPO") and min(img.size) >= 2 * min_side:
                    # Draft picks the largest DCT scale (1/2..1/8) that keeps both sides >= the request.
                    k = min(img.size) / min_side
                    img.draft("RGB", (math.ceil(img.size[0] / k), math.ceil(img.size[1] / k)))
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = np.asarray(to_rgb(img))
    except DecodeError:
        raise
    except Exception as e:  # any decoder failure is this input's reason word, never a crashed batch
        with path.open("rb") as f:
            head = f.read(16)
        # Pillow names the file as it was opened; the manifest names it only by its file name, so it is the
        # same wherever the raw store lies (a relative path here, an absolute one on a Dask worker).
        detail = (str(e) or type(e).__name__).replace(str(path), path.name)
        reason = _reason_for(e, head, size)
        if reason == "corrupt" and isinstance(e, UnidentifiedImageError):
            detail = f"starts like {_sniff(head)} but cannot be parsed"
        raise DecodeError(reason, detail) from None
    return Decoded(rgb=rgb, width=w, height=h, format=fmt, mode=stored_mode, frames=frames)


def load_rgb(path: str | Path) -> Image.Image:
    """The full-size RGB image (EXIF orientation applied), for cropping and matting."""
    return Image.fromarray(decode(path).rgb)
