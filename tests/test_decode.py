"""decode(): every bad or odd file gets a stable reason word or a correct RGB array.

All inputs are real files on disk, built here with Pillow/numpy (and by hand where Pillow cannot
write the format, e.g. a 16-bit RGB PNG or a decompression bomb). The same corpus then goes through
the raw store (folder, zip, tar) to check that every input is accounted for.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import unicodedata
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tasks.curation.decode import DecodeError, decode, load_rgb
from tasks.ingestion.sources.local import MemberLimits, ingest_path
from tasks.ingestion.sources.raw import FILES, PROVENANCE, read_provenance

PILLOW_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's own default guard
REASONS = {"empty", "not_image", "truncated", "corrupt", "bomb"}
LIMITS = MemberLimits(max_bytes=256 << 20, max_ratio=200.0)  # params.yaml's caps


# ---------------------------------------------------------------- builders (bytes of real files)

def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _astronaut() -> np.ndarray:
    return skimage.data.astronaut()


def _jpeg(arr: np.ndarray | None = None, **kw) -> bytes:
    return _save(Image.fromarray(_astronaut() if arr is None else arr), "JPEG", quality=90, **kw)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_by_hand(width: int, height: int, bit_depth: int, color_type: int, rows) -> bytes:
    """A PNG written chunk by chunk; `rows` yields each row's raw bytes (filter byte added here).

    IDAT is compressed as a stream, so a huge image of zero rows never exists in memory.
    """
    z = zlib.compressobj(9)
    idat = bytearray()
    for row in rows:
        idat += z.compress(b"\x00" + row)
    idat += z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", bytes(idat))
            + _png_chunk(b"IEND", b""))


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height zero pixels: kilobytes on disk."""
    row = bytes((width + 7) // 8)
    return _png_by_hand(width, height, 1, 0, (row for _ in range(height)))


def _jpeg_headers_then_garbage() -> bytes:
    """A real JPEG's markers up to its scan header, then seeded random bytes instead of the rest."""
    data = _jpeg()
    sos = data.index(b"\xff\xda")
    rng = np.random.default_rng(0)
    return data[:sos] + rng.integers(0, 256, len(data) - sos, dtype=np.uint8).tobytes()


def _jpeg_scan_garbage() -> bytes:
    """Valid headers and scan header, random entropy-coded data (with stray 0xFF markers), EOI."""
    data = _jpeg()
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
    rng = np.random.default_rng(1)
    return data[:start] + rng.integers(0, 256, len(data) - start - 2, dtype=np.uint8).tobytes() + b"\xff\xd9"


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name -> (bytes builder, expected reason). Names double as file names in the corpus folder.
BAD = {
    "truncated.jpg": (lambda: _half(_jpeg()), "truncated"),
    "truncated-progressive.jpg": (lambda: _half(_jpeg(progressive=True)), "truncated"),
    "truncated.png": (lambda: _half(_save(Image.fromarray(_astronaut()), "PNG")), "truncated"),
    "truncated.gif": (lambda: _half(_save(Image.fromarray(_astronaut()), "GIF")), "truncated"),
    "truncated.webp": (lambda: _half(_save(Image.fromarray(_astronaut()), "WEBP")), "truncated"),
    "zero-bytes.jpg": (lambda: b"", "empty"),
    "notes.jpg": (lambda: b"These are my holiday notes, not a photo.\n" * 20, "not_image"),
    "error-page.png": (lambda: b"<!doctype html><html><body>403 Forbidden</body></html>\n", "not_image"),
    "header-then-garbage.jpg": (_jpeg_headers_then_garbage, "corrupt"),
    "scan-garbage.jpg": (_jpeg_scan_garbage, "corrupt"),
    "bomb.png": (lambda: _bomb_png(16384, 12000), "bomb"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, (build, _reason) in BAD.items():
        (folder / name).write_bytes(build())
    (folder / "good.jpg").write_bytes(_jpeg())
    (folder / "good.png").write_bytes(_save(Image.fromarray(skimage.data.rocket()), "PNG"))
    return folder


# ---------------------------------------------------------------- bad files

@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_reason(corpus, name):
    with pytest.raises(DecodeError) as info:
        decode(corpus / name)
    assert info.value.reason == BAD[name][1], info.value.detail
    assert info.value.detail  # something a human can read in the manifest


def test_bad_files_also_fail_in_thumbnail_mode(corpus):
    for name, (_build, reason) in BAD.items():
        with pytest.raises(DecodeError) as info:
            decode(corpus / name, min_side=64)
        assert info.value.reason == reason, name


def test_bomb_is_tiny_on_disk_and_pillow_guard_stays_on(corpus):
    import tasks.curation.decode  # noqa: F401  (importing must not loosen Pillow's guard)

    assert (corpus / "bomb.png").stat().st_size < 100_000
    assert 16384 * 12000 > 2 * Image.MAX_IMAGE_PIXELS
    assert Image.MAX_IMAGE_PIXELS == PILLOW_DEFAULT_MAX_PIXELS
    with pytest.raises(Image.DecompressionBombError):
        Image.open(corpus / "bomb.png")


def test_decode_does_not_silence_bomb_warnings_globally(corpus, tmp_path):
    decode(corpus / "good.jpg")
    with pytest.raises(DecodeError):
        decode(corpus / "bomb.png")
    # Between 1x and 2x the limit Pillow warns; that warning must still reach other code.
    big = tmp_path / "big.png"
    big.write_bytes(_bomb_png(10000, 9000))
    assert Image.MAX_IMAGE_PIXELS < 10000 * 9000 <= 2 * Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(big).close()
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


def test_good_files_decode(corpus):
    d = decode(corpus / "good.jpg")
    assert d.rgb.shape == (512, 512, 3) and d.rgb.dtype == np.uint8
    assert (d.width, d.height, d.format, d.frames) == (512, 512, "JPEG", 1)
    assert np.abs(d.rgb.astype(int) - _astronaut()).mean() < 4  # q90 JPEG of the same photo
    p = decode(corpus / "good.png")
    assert np.array_equal(p.rgb, skimage.data.rocket())  # lossless: exactly the pixels
    assert load_rgb(corpus / "good.png").size == (640, 427)


# ---------------------------------------------------------------- modes and colours

def test_cmyk_jpeg_to_rgb_with_sane_colours(tmp_path):
    arr = np.zeros((64, 192, 3), np.uint8)
    arr[:, :64], arr[:, 64:128], arr[:, 128:] = (220, 30, 30), (30, 200, 40), (240, 240, 240)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(arr).convert("CMYK").save(path, quality=95)
    d = decode(path)
    assert d.mode == "CMYK" and d.rgb.shape == (64, 192, 3)
    for x, want in ((32, (220, 30, 30)), (96, (30, 200, 40)), (160, (240, 240, 240))):
        assert np.abs(d.rgb[32, x].astype(int) - want).max() <= 12, (x, d.rgb[32, x])


def test_16bit_grey_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535, 1000, 60000]], np.uint16).repeat(4, axis=0)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"  # really stored as 16-bit
    d = decode(path)
    assert d.mode == "I;16"
    row = d.rgb[0, :, 0].tolist()
    assert row == [0, 1, 128, 255, 4, 233]  # round(v / 65535 * 255)
    assert (d.rgb[..., 0] == d.rgb[..., 1]).all() and (d.rgb[..., 1] == d.rgb[..., 2]).all()


def test_dark_16bit_png_stays_dark(tmp_path):
    # A 16-bit image whose values are all <= 255 is nearly black, not an 8-bit image.
    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((8, 8), 255, np.uint16)).save(path)
    assert decode(path).rgb.max() <= 1


def test_16bit_rgb_png_to_8bit(tmp_path):
    px = [(65535, 0, 32768), (0x7FFF, 65535, 0), (256, 512, 1024)]
    row = b"".join(struct.pack(">HHH", *p) for p in px)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_by_hand(3, 2, 16, 2, [row, row]))
    d = decode(path)
    assert d.rgb.shape == (2, 3, 3)
    assert d.rgb[0].tolist() == [[255, 0, 128], [127, 255, 0], [1, 2, 4]]


def _palette_image(transparent_index: int | None = None) -> Image.Image:
    idx = np.zeros((16, 32), np.uint8)
    idx[:, 16:] = 1
    img = Image.frombytes("P", (32, 16), idx.tobytes())
    img.putpalette([200, 20, 20, 20, 20, 200] + [0, 0, 0] * 254)
    if transparent_index is not None:
        img.info["transparency"] = transparent_index
    return img


def test_palette_png(tmp_path):
    path = tmp_path / "palette.png"
    _palette_image().save(path)
    d = decode(path)
    assert d.mode == "P"
    assert d.rgb[8, 4].tolist() == [200, 20, 20] and d.rgb[8, 20].tolist() == [20, 20, 200]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_goes_white(tmp_path, fmt):
    path = tmp_path / f"palette-t.{fmt.lower()}"
    _palette_image(transparent_index=1).save(path, fmt, transparency=1)
    d = decode(path)
    assert d.mode == "P"
    assert d.rgb[8, 4].tolist() == [200, 20, 20]
    assert d.rgb[8, 20].tolist() == [255, 255, 255]  # transparent -> white, not the palette colour


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((8, 24, 4), np.uint8)
    arr[:, :8] = (0, 0, 0, 0)          # fully transparent black
    arr[:, 8:16] = (10, 120, 30, 255)  # opaque
    arr[:, 16:] = (255, 0, 0, 128)     # half-transparent red
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)
    d = decode(path)
    assert d.mode == "RGBA"
    assert d.rgb[4, 2].tolist() == [255, 255, 255]
    assert d.rgb[4, 10].tolist() == [10, 120, 30]
    r, g, b = d.rgb[4, 20].tolist()
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_grey_alpha_composited_on_white(tmp_path):
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 0] = 40
    la[:, 2:, 1] = 255
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    d = decode(path)
    assert d.rgb[0, 0].tolist() == [255, 255, 255] and d.rgb[0, 3].tolist() == [40, 40, 40]


# ---------------------------------------------------------------- orientation, frames, thumbnails

def _oriented_jpeg(path: Path, w: int, h: int, orientation: int) -> None:
    arr = np.full((h, w, 3), 40, np.uint8)
    arr[: h // 4, : w // 4] = (230, 20, 20)  # red mark at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, quality=95, exif=exif.tobytes())


def test_exif_orientation_6_transposed(tmp_path):
    path = tmp_path / "rotated.jpg"
    _oriented_jpeg(path, 300, 200, 6)
    d = decode(path)
    assert (d.width, d.height) == (200, 300)  # as displayed
    assert d.rgb.shape == (300, 200, 3)
    # Orientation 6 = rotate 90 degrees clockwise to display: stored top-left ends top-right.
    assert d.rgb[10, 190, 0] > 200 and d.rgb[10, 190, 1] < 60
    assert d.rgb[10, 10, 0] < 60
    assert load_rgb(path).size == (200, 300)


def test_exif_orientation_with_thumbnail(tmp_path):
    path = tmp_path / "rotated-big.jpg"
    _oriented_jpeg(path, 2048, 1536, 6)
    d = decode(path, min_side=256)
    assert (d.width, d.height) == (1536, 2048)
    h, w = d.rgb.shape[:2]
    assert h > w and min(h, w) >= 256 and max(h, w) < 2048
    assert d.rgb[5, w - 5, 0] > 200  # the mark is still top-right in the thumbnail


def test_animated_gif_first_frame_and_frame_count(tmp_path):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    frames = [Image.new("RGB", (40, 30), c) for c in colours]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    d = decode(path)
    assert d.frames == 3 and d.format == "GIF"
    assert d.rgb.shape == (30, 40, 3)
    assert np.abs(d.rgb.reshape(-1, 3).astype(int) - colours[0]).max() <= 4


ODD_NAMES = [
    "with spaces  and   more.jpg",
    "café crème.jpg",                                   # NFC accents
    unicodedata.normalize("NFD", "résumé-photo.jpg"),  # NFD accents (macOS style)
    "写真 東京.jpg",
    "sunset 🌅🔥.jpg",
    "-leading-dash.jpg",
    "--rf.jpg",
    "UPPER.JPG",
    "no-extension",
    "png-named-as.jpg",
    "semi;colon'quote\".jpg",
    ".hidden.jpg",
]


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_file_names_decode(tmp_path, name):
    path = tmp_path / name
    if name == "png-named-as.jpg":
        Image.fromarray(skimage.data.rocket()).save(path, "PNG")  # content decides, not the name
    else:
        path.write_bytes(_jpeg())
    d = decode(path)
    assert d.rgb.ndim == 3 and d.rgb.shape[2] == 3
    assert d.format == ("PNG" if name == "png-named-as.jpg" else "JPEG")
    decode(str(path))  # str paths too


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> Path:
    yy, xx = np.mgrid[0:2048, 0:2048]
    arr = np.stack([(xx // 8) % 256, (yy // 8) % 256, ((xx + yy) // 16) % 256], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    Image.fromarray(arr).save(path, quality=90)
    return path


def test_draft_mode_thumbnail(big_jpeg):
    d = decode(big_jpeg, min_side=256)
    assert (d.width, d.height) == (2048, 2048)  # full size is still reported
    assert 256 <= min(d.rgb.shape[:2]) < 2048
    assert d.rgb.shape[0] == d.rgb.shape[1]
    full = decode(big_jpeg)
    assert full.rgb.shape == (2048, 2048, 3)
    # The thumbnail is the same picture: compare against an area-downscale of the full decode.
    ref = np.asarray(Image.fromarray(full.rgb).resize(d.rgb.shape[1::-1], Image.Resampling.BOX))
    assert np.abs(ref.astype(int) - d.rgb).mean() < 3


@pytest.mark.parametrize("min_side", [200, 410, 700, 1024, 1500])
def test_draft_short_side_never_below_request(tmp_path, min_side):
    path = tmp_path / "wide.jpg"
    Image.new("RGB", (2048, 1536), (90, 140, 200)).save(path)
    d = decode(path, min_side=min_side)
    assert (d.width, d.height) == (2048, 1536)
    assert min(d.rgb.shape[:2]) >= min(min_side, 1536)
    assert d.rgb.shape[1] > d.rgb.shape[0]


def test_non_jpeg_box_reduced_to_min_side(corpus):
    """Formats without draft mode are box-reduced by an integer factor right after decoding, so the work
    after decode is bounded by min_side (issue 15); the full size is still reported."""
    d = decode(corpus / "good.png", min_side=64)
    assert (d.width, d.height) == (640, 427)
    assert 64 <= min(d.rgb.shape[:2]) < 128 and d.rgb.shape == (-(-427 // 6), -(-640 // 6), 3)  # reduce keeps partial edge blocks
    assert decode(corpus / "good.png").rgb.shape == (427, 640, 3)


# ---------------------------------------------------------------- raw store: every input accounted for

def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _outcome(path: Path) -> str:
    try:
        decode(path)
        return "ok"
    except DecodeError as e:
        return e.reason


def _expected(name: str) -> str:
    return BAD[name][1] if name in BAD else "ok"


def _check_store(raw: Path, items, expected_names: list[str], expected_outcome: dict[str, str],
                 refused: dict[str, str] | None = None):
    """`refused`: name -> reason of entries recorded without stored bytes (links, ...)."""
    refused = refused or {}
    everything = read_provenance(raw)
    assert len(everything) == len(items) == len(expected_names) + len(refused)  # one record per input
    assert {i.source_name: i.reason for i in everything if i.reason} == refused
    prov = [i for i in everything if not i.reason]
    assert sorted(i.source_name for i in prov) == sorted(expected_names)
    for item in prov:
        stored = raw / item.file
        assert stored.is_file() and stored.resolve().is_relative_to(raw.resolve())
        assert stored.stat().st_size == item.size
        assert not os.access(stored, os.W_OK) or os.geteuid() == 0  # read-only once stored
        assert _outcome(stored) == expected_outcome[item.source_name], item.source_name
    # Identical bytes share one stored file.
    assert len({i.id for i in prov}) == len(list((raw / FILES).iterdir()))
    lines = (raw / PROVENANCE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(everything) and all(json.loads(x)["id"] for x in lines)


def _folder_corpus(corpus: Path, dest: Path) -> dict[str, str]:
    """The corpus plus odd names and exact duplicates under other names; returns name -> outcome."""
    dest.mkdir()
    outcome = {}
    for p in sorted(corpus.iterdir()):
        (dest / p.name).write_bytes(p.read_bytes())
        outcome[p.name] = _expected(p.name)
    for name in ["写真 東京.jpg", "sunset 🌅.jpg", "-dash.jpg", "sub dir/copy of good.jpg"]:
        (dest / name).parent.mkdir(exist_ok=True)
        (dest / name).write_bytes((corpus / "good.jpg").read_bytes())  # exact duplicates
        outcome[name] = "ok"
    (dest / "sub dir" / "truncated again.jpg").write_bytes((corpus / "truncated.jpg").read_bytes())
    outcome["sub dir/truncated again.jpg"] = "truncated"
    return outcome


def test_ingest_folder_accounts_for_every_file(corpus, tmp_path):
    src = tmp_path / "in"
    outcome = _folder_corpus(corpus, src)
    raw = tmp_path / "raw"
    items = ingest_path(src, raw, LIMITS)
    _check_store(raw, items, list(outcome), outcome)
    by_name = {i.source_name: i for i in items}
    assert by_name["写真 東京.jpg"].id == by_name["good.jpg"].id == by_name["sub dir/copy of good.jpg"].id
    assert {i.source for i in items} == {"folder"}
    # Rerun: same records, nothing new stored (identity is the content hash).
    before = _tree(raw)
    again = ingest_path(src, raw, LIMITS)
    assert sorted((i.id, i.source_name) for i in again) == sorted((i.id, i.source_name) for i in items)
    assert _tree(raw) == before


def test_ingest_zip_accounts_for_every_member(corpus, tmp_path):
    outcome = _folder_corpus(corpus, tmp_path / "in")
    zpath = tmp_path / "photos.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("empty dir/", b"")
        for name in outcome:
            zf.write(tmp_path / "in" / name, name)
        zf.writestr("../evil.jpg", _jpeg())
    outcome["evil.jpg"] = "ok"
    raw = tmp_path / "store" / "raw"
    outside_before = _tree(tmp_path)
    items = ingest_path(zpath, raw, LIMITS)
    _check_store(raw, items, list(outcome), outcome)
    assert {i.source for i in items} == {"zip"}
    new = _tree(tmp_path) - outside_before
    assert all(p.startswith("store/raw") or p == "store" for p in new), new
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path / "store" / "evil.jpg").exists()


def test_ingest_tar_never_writes_outside_raw_dir(corpus, tmp_path):
    outcome = _folder_corpus(corpus, tmp_path / "in")
    tpath = tmp_path / "photos.tar"
    evil = _jpeg(skimage.data.coffee())
    with tarfile.open(tpath, "w") as tf:
        for name in outcome:
            tf.add(tmp_path / "in" / name, name)
        for name in ("../evil.jpg", "/abs/evil2.jpg"):
            info = tarfile.TarInfo(name)
            info.size = len(evil)
            tf.addfile(info, io.BytesIO(evil))
        link = tarfile.TarInfo("link-to-passwd.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        up = tarfile.TarInfo("link-up.jpg")
        up.type, up.linkname = tarfile.SYMTYPE, "../../outside.jpg"
        tf.addfile(up)
        hard = tarfile.TarInfo("hardlink.jpg")
        hard.type, hard.linkname = tarfile.LNKTYPE, "good.jpg"
        tf.addfile(hard)
        folder = tarfile.TarInfo("a folder")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
    outcome["evil.jpg"] = "ok"
    outcome["abs/evil2.jpg"] = "ok"
    raw = tmp_path / "store" / "raw"
    outside_before = _tree(tmp_path)
    items = ingest_path(tpath, raw, LIMITS)
    # Only regular members are stored; links and hard links are recorded as `link`, never followed, and a
    # plain directory is a container, not an input.
    _check_store(raw, items, list(outcome), outcome,
                 refused={"link-to-passwd.jpg": "link", "link-up.jpg": "link", "hardlink.jpg": "link"})
    assert {i.source for i in items} == {"tar"}
    new = _tree(tmp_path) - outside_before
    assert all(p.startswith("store/raw") or p == "store" for p in new), new
    assert not (tmp_path / "evil.jpg").exists() and not (tmp_path.parent / "evil.jpg").exists()
    assert not any(p.is_symlink() for p in raw.rglob("*"))
    assert not any(b"root:" in p.read_bytes() for p in (raw / FILES).iterdir())
