"""The embedded demo dataset: built at run time, offline, byte-identical on every run.

Real photos bundled with scikit-image, procedural images (cells, shapes, stripes, waves, tiles, marble,
gradients; 512 to 1280 px, several aspect ratios), the format oddities photo folders contain (CMYK,
16-bit, palette, transparency, EXIF rotation, animation, progressive, WebP, odd names) and at least one
planted input for every reason the curate flow rejects with, so one demo run shows them all.

    table = write_demo(Path("/tmp/demo"))    # {"photos/rocket.jpg": "accepted", "bad/empty.jpg": "empty", ...}

Determinism: every random number comes from a seeded numpy Generator, pixels are computed with integer
arithmetic or uint8 OpenCV/Pillow operations, and files are written with fixed encoder options and no
timestamps. Files are identical for the same pinned library versions (libjpeg-turbo, zlib, libwebp).
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

ACCEPTED = "accepted"

# Every reason a default-settings run of the demo produces (face_mode=reject, so no `no_face`).
DEMO_REASONS = frozenset({
    "empty", "not_image", "truncated", "corrupt", "bomb",   # decode
    "too_small", "blurry", "grayscale",                      # cheap checks
    "duplicate",                                             # exact copy and near duplicate
    "face", "text",                                          # content detectors
})

# The bomb's declared size: above 2 x Pillow's default MAX_IMAGE_PIXELS (89,478,485), where Pillow
# refuses to open it, yet ~25 kB on disk (1-bit pixels, all zero, streamed through zlib).
BOMB_SIZE = (20000, 10000)

Rgb = np.ndarray  # HxWx3 uint8


# ---------------------------------------------------------------------------------------------------
# Encoders: fixed options, no metadata that varies.

def _jpeg(img: Image.Image | Rgb, quality: int = 92, **options) -> bytes:
    img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=False, **options)
    return buf.getvalue()


def _png(img: Image.Image | Rgb, **options) -> bytes:
    img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=6, **options)
    return buf.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png_by_hand(width: int, height: int, bit_depth: int, color_type: int, rows) -> bytes:
    """A PNG from an iterable of raw scanlines (filter byte included), compressed as a stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for row in rows) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------
# Procedural images. Each takes a seeded Generator and a size, and returns HxWx3 uint8.

def _colours(rng: np.random.Generator, n: int, lo: int = 20, hi: int = 256) -> np.ndarray:
    return rng.integers(lo, hi, (n, 3), dtype=np.uint8)


def _grain(rng: np.random.Generator, img: Rgb, amount: int) -> Rgb:
    """Film grain: the fine texture every photo has, and what keeps a smooth image from reading as blurry."""
    noise = rng.integers(-amount, amount + 1, img.shape[:2], dtype=np.int16)[..., None]
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _linear_gradient(rng: np.random.Generator, w: int, h: int) -> Rgb:
    c0, c1 = _colours(rng, 2).astype(np.int64)
    dx, dy = (int(v) for v in rng.integers(-8, 9, 2))
    dx = dx or 1
    y, x = np.mgrid[0:h, 0:w]
    t = dx * x + dy * y
    t = (t - t.min()) * 1024 // max(1, int(t.max() - t.min()))  # 0..1024
    return (c0 + (c1 - c0) * t[..., None] // 1024).astype(np.uint8)


def cells(rng: np.random.Generator, w: int, h: int, n: int = 70) -> Rgb:
    """Voronoi cells with dark borders, like cracked glaze or stained glass."""
    seeds = np.ones((h, w), np.uint8)
    seeds[rng.integers(0, h, n), rng.integers(0, w, n)] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    img = _colours(rng, n + 1, 40)[labels]
    edge = (labels != np.roll(labels, 1, 0)) | (labels != np.roll(labels, 1, 1))
    img[cv2.dilate(edge.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0] = (25, 20, 30)
    return _grain(rng, img, 6)


def shapes(rng: np.random.Generator, w: int, h: int, n: int = 30) -> Rgb:
    """Overlapping rectangles, triangles and ellipses on a gradient."""
    img = np.ascontiguousarray(_linear_gradient(rng, w, h))
    s = min(w, h)
    for _ in range(n):
        colour = tuple(int(v) for v in _colours(rng, 1)[0])
        kind = int(rng.integers(0, 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(s // 12, s // 4))  # no small isolated shapes: they read as glyphs
        if kind == 0:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1, cv2.LINE_AA)
        elif kind == 1:
            pts = rng.integers(-r, r + 1, (3, 2)) + (cx, cy)
            cv2.fillPoly(img, [pts.astype(np.int32)], colour, cv2.LINE_AA)
        else:  # filled: an outlined circle reads as the letter O to a text detector
            cv2.ellipse(img, (cx, cy), (r, r * 2 // 3), int(rng.integers(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    return _grain(rng, img, 4)


def stripes(rng: np.random.Generator, w: int, h: int, plaid: bool = False) -> Rgb:
    """Diagonal bands of colour (two crossed sets for plaid)."""
    y, x = np.mgrid[0:h, 0:w]
    pal = _colours(rng, 6).astype(np.int16)
    a, b = (int(v) for v in rng.integers(1, 6, 2))
    period = int(rng.integers(14, 40))
    img = pal[((a * x + b * y) // period) % len(pal)]
    if plaid:
        pal2 = _colours(rng, 5).astype(np.int16)
        period2 = int(rng.integers(20, 50))
        img = (img + pal2[((b * x - a * y) // period2) % len(pal2)]) // 2
    return _grain(rng, img.astype(np.uint8), 4)


def waves(rng: np.random.Generator, w: int, h: int) -> Rgb:
    """Zigzag bands of colour, like layered sediment or a knitted chevron.

    (Not concentric rings: a ring reads as the letter O to a text detector.)"""
    y, x = np.mgrid[0:h, 0:w]
    pal = _colours(rng, 7).astype(np.int16)
    period, amp, band = (int(v) for v in (rng.integers(60, 160), rng.integers(20, 80), rng.integers(12, 30)))
    tri = np.abs((x % period) - period // 2) * amp // (period // 2)    # triangle wave, 0..amp
    img = pal[((y + tri) // band) % len(pal)]
    return _grain(rng, img.astype(np.uint8), 4)


def tiles(rng: np.random.Generator, w: int, h: int, splits: int = 60) -> Rgb:
    """A mosaic of rectangles from repeated random splits, with grout lines (a Mondrian-like quilt)."""
    img = np.zeros((h, w, 3), np.uint8)
    boxes = [(0, 0, w, h)]
    for _ in range(splits):
        i = int(np.argmax([(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in boxes]))
        x0, y0, x1, y1 = boxes.pop(i)
        if (x1 - x0) >= (y1 - y0):
            cut = int(rng.integers(x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4 + 1))
            boxes += [(x0, y0, cut, y1), (cut, y0, x1, y1)]
        else:
            cut = int(rng.integers(y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4 + 1))
            boxes += [(x0, y0, x1, cut), (x0, cut, x1, y1)]
    for (x0, y0, x1, y1), colour in zip(boxes, _colours(rng, len(boxes), 30)):
        img[y0:y1, x0:x1] = colour
        img[y0:y0 + 3, x0:x1] = img[y0:y1, x0:x0 + 3] = (240, 236, 228)
    return _grain(rng, img, 5)


def _value_noise(rng: np.random.Generator, w: int, h: int, octaves) -> np.ndarray:
    """Smooth random field (int32, 0..255 x sum of weights): random grids upscaled bilinearly, summed."""
    acc = np.zeros((h, w), np.int32)
    for cell, weight in octaves:
        small = rng.integers(0, 256, (max(2, h // cell), max(2, w // cell)), dtype=np.uint8)
        acc += weight * cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.int32)
    return acc


def marble(rng: np.random.Generator, w: int, h: int) -> Rgb:
    """Veined bands bent by a smooth random field, like marble or agate.

    (Not plain cloud noise: its round dark blobs make the Haar cascade see faces.)"""
    y, x = np.mgrid[0:h, 0:w]
    pal = _colours(rng, 6, 30).astype(np.int16)
    a, b = (int(v) for v in rng.integers(1, 4, 2))
    field = _value_noise(rng, w, h, ((160, 3), (60, 1)))
    period = int(rng.integers(40, 90))
    img = pal[((a * x + b * y + field) // period) % len(pal)]
    return _grain(rng, img.astype(np.uint8), 5)


def gradient(rng: np.random.Generator, w: int, h: int) -> Rgb:
    """A sky-like gradient with grain and a few parallel wires across it.

    (Wires never cross: crossed lines read as X to a text detector.)"""
    img = np.ascontiguousarray(_linear_gradient(rng, w, h))
    colour = tuple(int(v) for v in _colours(rng, 1, 0, 90)[0])
    slope = int(rng.integers(-h // 6, h // 6 + 1))
    for y0 in sorted(int(v) for v in rng.integers(h // 8, h - h // 8 - abs(slope), 3)):
        y0 += max(0, -slope)
        cv2.line(img, (0, y0), (w - 1, y0 + slope), colour, 3, cv2.LINE_AA)
    return _grain(rng, img, 12)


def tint(gray: np.ndarray, dark: tuple[int, int, int], light: tuple[int, int, int]) -> Rgb:
    """A grey photo mapped between two colours (duotone), in integers."""
    g = gray.astype(np.int32)[..., None]
    d, l = np.array(dark, np.int32), np.array(light, np.int32)
    return (d + (l - d) * g // 255).astype(np.uint8)


def _gen(kind: Callable[..., Rgb], seed: int, w: int, h: int, **kw) -> Rgb:
    return kind(np.random.default_rng(seed), w, h, **kw)


# ---------------------------------------------------------------------------------------------------
# Real photos (scikit-image's bundled files: no download).

def _sk(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    return img[0] if isinstance(img, tuple) else img


# ---------------------------------------------------------------------------------------------------
# Format oddities, built from unique content so none is a near duplicate of another.

def _png16_rgb(rgb16: np.ndarray) -> bytes:
    """16-bit-per-channel RGB PNG (Pillow cannot write one), big-endian scanlines, filter 0."""
    h, w, _ = rgb16.shape
    be = rgb16.astype(">u2")
    return _png_by_hand(w, h, 16, 2, (b"\x00" + be[y].tobytes() for y in range(h)))


def _rgb16(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Cells at 16-bit depth: 8-bit content widened, plus a smooth ramp in the low byte."""
    base = cells(rng, w, h, n=50).astype(np.uint16) * 257
    y, x = np.mgrid[0:h, 0:w]
    return base - ((x + y) * 200 // (w + h)).astype(np.uint16)[..., None]


def _exif_rotated(display: Rgb) -> bytes:
    """Pixels stored rotated 90 degrees anticlockwise with orientation 6 (rotate 90 CW to display),
    as phone cameras write them. Decoding must apply the tag: the displayed image is `display`."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(np.ascontiguousarray(np.rot90(display, 1)), exif=exif.tobytes())


def _gif(frames: list[Rgb]) -> bytes:
    pal = [Image.fromarray(f).quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
           for f in frames]
    buf = io.BytesIO()
    pal[0].save(buf, "GIF", save_all=True, append_images=pal[1:], duration=400, loop=0, optimize=False)
    return buf.getvalue()


def _rgba_logo() -> bytes:
    """scikit-image's round logo with its white surround made transparent (and black underneath, so
    an image that ignored alpha would show black corners; decode composites it on white)."""
    rgba = _sk("logo").copy()
    h, w = rgba.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    outside = (2 * x - w + 1) ** 2 + (2 * y - h + 1) ** 2 > (w - 4) ** 2   # outside the circle
    rgba[outside] = 0
    return _png(rgba)


def _palette(rgb: Rgb) -> bytes:
    img = Image.fromarray(rgb).quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    return _png(img)


def _cmyk(rgb: Rgb) -> bytes:
    return _jpeg(Image.fromarray(rgb).convert("CMYK"))


def _webp(rgb: Rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "WEBP", quality=85, method=4)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# Planted bad inputs.

def _bomb() -> bytes:
    """A 1-bit greyscale PNG of 200 megapixels: tiny on disk, refused by Pillow's bomb guard."""
    w, h = BOMB_SIZE
    row = b"\x00" * (1 + (w + 7) // 8)
    block = row * 500
    return _png_by_hand(w, h, 1, 0, (block for _ in range(h // 500)))


def _corrupt_jpeg(rng: np.random.Generator) -> bytes:
    """A valid JPEG start (SOI + JFIF APP0) followed by bytes that are no JPEG segment at all."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    garbage = rng.integers(0, 255, 4096, dtype=np.uint8)  # 0..254: no 0xFF, so no marker to resync on
    return b"\xff\xd8" + app0 + garbage.tobytes()


def _corrupt_png(rng: np.random.Generator) -> bytes:
    """A valid PNG signature and IHDR, then an IDAT whose zlib stream is noise."""
    ihdr = struct.pack(">IIBBBBB", 640, 480, 8, 2, 0, 0, 0)
    idat = rng.integers(0, 256, 8192, dtype=np.uint8).tobytes()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


_NOT_IMAGE = (
    "<!DOCTYPE html>\n<html><head><title>429 Too Many Requests</title></head>\n"
    "<body><h1>Please wait a few minutes before you try again.</h1></body></html>\n"
).encode()


def _caption(w: int, h: int) -> Rgb:
    """A promotional graphic: big captions on a clean coloured background (rapidocr reads it)."""
    img = np.full((h, w, 3), (235, 120, 40), np.uint8)
    cv2.rectangle(img, (30, 30), (w - 30, h - 30), (255, 240, 200), 6)
    font = cv2.FONT_HERSHEY_DUPLEX
    for i, line in enumerate(("SUMMER SALE", "50% OFF", "SHOP NOW")):
        cv2.putText(img, line, (70, 170 + i * 150), font, 3.0, (255, 255, 255), 8, cv2.LINE_AA)
    return img


# ---------------------------------------------------------------------------------------------------
# The demo: (relative path, builder, expected reason), one group of files per function.

Entry = tuple[str, Callable[[], bytes], str]


def _proc(kind: Callable[..., Rgb], seed: int, w: int, h: int, encode: Callable[..., bytes] = _jpeg,
          **kw) -> Callable[[], bytes]:
    """A procedural image's builder."""
    return lambda: encode(_gen(kind, seed, w, h, **kw))


def _photos(rocket: bytes, hubble: Rgb) -> list[Entry]:
    """Real photos."""
    return [
        ("photos/rocket.jpg", lambda: rocket, ACCEPTED),
        ("photos/retina.jpg", lambda: _jpeg(_sk("retina"), 90), ACCEPTED),  # 1411², read in draft mode
        ("photos/immunohistochemistry.jpg", lambda: _jpeg(_sk("immunohistochemistry")), ACCEPTED),
        ("photos/hubble_deep_field.jpg", lambda: _jpeg(hubble), ACCEPTED),
        ("photos/astronaut.jpg", lambda: _jpeg(_sk("astronaut")), "face"),
        ("photos/camera.jpg", lambda: _jpeg(_sk("camera")), "grayscale"),
        ("photos/coffee.jpg", lambda: _jpeg(_sk("coffee")), "too_small"),      # 600x400
        ("photos/chelsea.jpg", lambda: _jpeg(_sk("chelsea")), "too_small"),    # 451x300
    ]


def _textures() -> list[Entry]:
    """Grey textures toned in colour (duotone)."""
    return [
        ("textures/brick-terracotta.jpg", lambda: _jpeg(tint(_sk("brick"), (70, 20, 10), (240, 150, 100))), ACCEPTED),
        ("textures/grass-green.jpg", lambda: _jpeg(tint(_sk("grass"), (10, 40, 5), (190, 240, 90))), ACCEPTED),
        ("textures/gravel-sand.jpg", lambda: _jpeg(tint(_sk("gravel"), (60, 40, 20), (250, 220, 160))), ACCEPTED),
        ("textures/moon-blue.jpg", lambda: _jpeg(tint(_sk("moon"), (0, 10, 60), (160, 220, 255))), ACCEPTED),
    ]


def _procedural() -> list[Entry]:
    """Procedural images, 512 to 1280 px, several aspect ratios."""
    return [
        ("procedural/cells-1024x768.jpg", _proc(cells, 101, 1024, 768), ACCEPTED),
        ("procedural/cells-512x512.png", _proc(cells, 102, 512, 512, _png), ACCEPTED),
        ("procedural/shapes-1280x720.jpg", _proc(shapes, 103, 1280, 720), ACCEPTED),
        ("procedural/shapes-600x900.jpg", _proc(shapes, 104, 600, 900), ACCEPTED),
        ("procedural/stripes-800x600.jpg", _proc(stripes, 105, 800, 600), ACCEPTED),
        ("procedural/plaid-1024x1024.jpg", _proc(stripes, 106, 1024, 1024, plaid=True), ACCEPTED),
        ("procedural/waves-960x540.jpg", _proc(waves, 107, 960, 540), ACCEPTED),
        ("procedural/tiles-720x1280.jpg", _proc(tiles, 108, 720, 1280), ACCEPTED),
        ("procedural/marble-768x512.jpg", _proc(marble, 109, 768, 512), ACCEPTED),
        ("procedural/gradient-1200x800.jpg", _proc(gradient, 110, 1200, 800), ACCEPTED),
        ("procedural/gradient-640x480.jpg", _proc(gradient, 111, 640, 480), ACCEPTED),
    ]


def _formats() -> list[Entry]:
    """Format oddities: all decode to RGB and are accepted."""
    return [
        ("formats/cmyk.jpg", lambda: _cmyk(_gen(shapes, 201, 768, 576)), ACCEPTED),
        ("formats/rgb-16bit.png", lambda: _png16_rgb(_rgb16(np.random.default_rng(202), 640, 640)), ACCEPTED),
        ("formats/palette.png", lambda: _palette(_gen(tiles, 203, 800, 600)), ACCEPTED),
        ("formats/rgba-transparent.png", _rgba_logo, ACCEPTED),
        ("formats/exif-orientation-6.jpg", lambda: _exif_rotated(_sk("stereo_motorcycle")), ACCEPTED),
        ("formats/animated.gif", lambda: _gif([_gen(waves, 206 + i, 600, 600) for i in range(3)]), ACCEPTED),
        ("formats/progressive.jpg", lambda: _jpeg(_gen(stripes, 209, 900, 600), progressive=True), ACCEPTED),
        ("formats/lossy.webp", lambda: _webp(_gen(marble, 210, 640, 640)), ACCEPTED),
    ]


def _names() -> list[Entry]:
    """Names as people and phones write them."""
    return [
        ("names/sunset at the beach.jpg", _proc(gradient, 301, 1024, 683), ACCEPTED),
        ("names/café crème.jpg", _proc(cells, 302, 700, 700), ACCEPTED),
        ("names/日本の風景.jpg", _proc(tiles, 303, 800, 533), ACCEPTED),
        ("names/🌅 sunrise.png", _proc(shapes, 304, 512, 512, _png), ACCEPTED),
        ("names/-leading-dash.jpg", _proc(waves, 305, 640, 800), ACCEPTED),
        ("names/IMG_0001.JPEG", _proc(marble, 306, 1024, 576), ACCEPTED),
    ]


def _planted_rejects() -> list[Entry]:
    """One or more bad inputs per reject reason."""
    return [
        ("bad/empty.jpg", lambda: b"", "empty"),
        ("bad/rate-limited.jpg", lambda: _NOT_IMAGE, "not_image"),
        ("bad/truncated.jpg", lambda: (b := _jpeg(_gen(cells, 401, 800, 600)))[: len(b) // 2], "truncated"),
        ("bad/corrupt.jpg", lambda: _corrupt_jpeg(np.random.default_rng(402)), "corrupt"),
        ("bad/corrupt.png", lambda: _corrupt_png(np.random.default_rng(403)), "corrupt"),
        ("bad/bomb.png", _bomb, "bomb"),
        ("bad/blurry.jpg", lambda: _jpeg(cv2.GaussianBlur(_gen(shapes, 404, 800, 600), (0, 0), 10)), "blurry"),
        ("bad/caption.jpg", lambda: _jpeg(_caption(900, 600)), "text"),
        ("bad/rocket-grey-rgb.jpg",
         lambda: _jpeg(Image.fromarray(_sk("rocket")).convert("L").convert("RGB")), "grayscale"),
        ("bad/gravel-16bit-grey.png", lambda: _png(Image.fromarray(_sk("gravel").astype(np.uint16) * 257)),
         "grayscale"),
    ]


def _reposts(rocket: bytes, hubble: Rgb) -> list[Entry]:
    """Reposts: the same bytes under another name (sorts after the original, which is kept), and a smaller
    re-encoded copy (the larger original is kept)."""
    hubble_small = cv2.resize(hubble, (850, 741), interpolation=cv2.INTER_AREA)
    return [
        ("reposts/rocket.jpg", lambda: rocket, "duplicate"),
        ("reposts/hubble-850px.jpg", lambda: _jpeg(hubble_small, 80), "duplicate"),
    ]


def _entries() -> list[Entry]:
    rocket, hubble = _jpeg(_sk("rocket")), _sk("hubble_deep_field")  # each also reposted
    return (_photos(rocket, hubble) + _textures() + _procedural() + _formats() + _names() + _planted_rejects()
            + _reposts(rocket, hubble))


def write_demo(dest: Path) -> dict[str, str]:
    """Write the demo files under `dest`; returns {relative posix path: expected reason or "accepted"}."""
    dest = Path(dest)
    table: dict[str, str] = {}
    for rel, build, expected in _entries():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build())
        table[rel] = expected
    return table
