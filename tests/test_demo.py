"""The embedded demo: built offline and byte-identical every time, and every file gets the outcome its
table promises when the real decoder, filters, deduplication and detectors look at it."""
from __future__ import annotations

import hashlib
import itertools
import struct
import time
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from tasks.curation.decode import DecodeError, decode
from tasks.curation.dedup import Candidate, hamming, near_duplicates
from tasks.curation.detectors import DETECT_SIDE, content_verdict
from tasks.curation.filters import cheap_scores, cheap_verdict
from tasks.common.settings import CurateSettings, load
from tasks.ingestion.sources.demo import ACCEPTED, BOMB_SIZE, DEMO_REASONS, write_demo
from tasks.ingestion.sources.local import MemberLimits, ingest_path

ROOT = Path(__file__).resolve().parents[1]
DECODE_REASONS = {"empty", "not_image", "truncated", "corrupt", "bomb"}


@pytest.fixture(scope="module")
def params():
    return load(CurateSettings, ROOT / "params.yaml")


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict[str, str], float]:
    root = tmp_path_factory.mktemp("demo")
    t0 = time.perf_counter()
    table = write_demo(root)
    return root, table, time.perf_counter() - t0


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def curated(demo, params) -> tuple[dict[str, str], dict[str, dict], dict[str, tuple[str, int]]]:
    """Every demo file through the curate flow's stages, in its order, with the real pure functions:
    exact copies (same bytes; the first name in sorted order is kept), decode + cheap checks on the
    thumbnail screen_cheap decodes, near duplicates among what passed, faces/text on what is left."""
    root, table, _ = demo
    outcome: dict[str, str] = {}
    scores: dict[str, dict] = {}
    first: dict[str, str] = {}
    for name in sorted(table):
        digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
        if digest in first:
            outcome[name] = "duplicate"
        else:
            first[digest] = name
    passed = {}
    for name in sorted(set(table) - set(outcome)):
        try:
            d = decode(root / name, min_side=params.blur_size)
        except DecodeError as e:
            outcome[name] = e.reason
            continue
        scores[name] = cheap_scores(d.rgb, d.width, d.height, params)
        reason = cheap_verdict(scores[name], params)
        if reason:
            outcome[name] = reason
        else:
            passed[name] = scores[name]
    near = near_duplicates([Candidate(n, s["phash"], s["width"] * s["height"], s["blur_var"])
                            for n, s in sorted(passed.items())], params.dup_max_distance)
    outcome.update({name: "duplicate" for name in near})
    for name in sorted(set(passed) - set(near)):
        d = decode(root / name, min_side=DETECT_SIDE // 2)
        reason, content, _ = content_verdict(d.rgb, params)
        scores[name].update(content)
        outcome[name] = reason or ACCEPTED
    return outcome, scores, near


def test_table_names_every_file_written(demo):
    root, table, _ = demo
    assert set(_files(root)) == set(table)
    assert all(unicodedata.is_normalized("NFC", name) for name in table)
    accepted = [n for n, r in table.items() if r == ACCEPTED]
    assert 25 <= len(accepted) and len(table) <= 70  # a real dataset's worth, curated in well under a minute


def test_every_reason_is_planted(demo):
    _, table, _ = demo
    assert set(table.values()) == DEMO_REASONS | {ACCEPTED}
    assert DEMO_REASONS >= DECODE_REASONS | {"too_small", "blurry", "grayscale", "text", "face", "duplicate"}


def test_rewrite_is_byte_identical_and_fast(demo, tmp_path):
    root, table, seconds = demo
    assert write_demo(tmp_path / "again") == table
    first, second = _files(root), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, f"not deterministic: {differ}"
    assert seconds < 10, f"write_demo took {seconds:.1f} s"


def test_decode_failures_get_their_reason(demo, params):
    root, table, _ = demo
    for name, expected in sorted(table.items()):
        for min_side in (None, params.blur_size, DETECT_SIDE // 2):  # full size and both thumbnails
            if expected in DECODE_REASONS:
                with pytest.raises(DecodeError) as e:
                    decode(root / name, min_side=min_side)
                assert e.value.reason == expected, (name, min_side, e.value.detail)
            else:
                decode(root / name, min_side=min_side)


def test_bomb_is_tiny_on_disk_and_huge_declared(demo):
    root, table, _ = demo
    (bomb,) = [n for n, r in table.items() if r == "bomb"]
    data = (root / bomb).read_bytes()
    assert len(data) < 100_000
    width, height = struct.unpack(">II", data[16:24])  # IHDR, right after the signature
    assert (width, height) == BOMB_SIZE
    assert width * height > 2 * Image.MAX_IMAGE_PIXELS


def test_format_oddities_are_what_they_claim(demo):
    root, table, _ = demo

    def opened(name):
        assert name in table, name
        return Image.open(root / name)

    with opened("formats/cmyk.jpg") as im:
        assert im.mode == "CMYK"
    with opened("formats/palette.png") as im:
        assert im.mode == "P"
    with opened("formats/rgba-transparent.png") as im:
        assert im.mode == "RGBA" and im.getextrema()[3][0] == 0  # some pixels fully transparent
    assert (decode(root / "formats/rgba-transparent.png").rgb[0, 0] == 255).all()  # composited on white
    with opened("formats/animated.gif") as im:
        assert im.n_frames > 1
    with opened("formats/progressive.jpg") as im:
        assert im.info.get("progressive")
    with opened("formats/lossy.webp") as im:
        assert im.format == "WEBP"
    with opened("formats/exif-orientation-6.jpg") as im:
        assert im.getexif().get(0x0112) == 6 and im.height > im.width  # stored portrait
    d = decode(root / "formats/exif-orientation-6.jpg")
    assert d.width > d.height and d.rgb.shape[1] > d.rgb.shape[0]  # displayed landscape
    rgb16 = (root / "formats/rgb-16bit.png").read_bytes()
    assert rgb16[24:26] == bytes([16, 2])  # IHDR bit depth 16, colour type RGB
    with opened("bad/gravel-16bit-grey.png") as im:
        assert im.mode.startswith("I;16")
    assert table["formats/cmyk.jpg"] == table["formats/rgb-16bit.png"] == ACCEPTED


def test_odd_names_survive_ingest(demo, tmp_path):
    root, table, _ = demo
    odd = [n for n in table if n.startswith("names/")]
    assert any(" " in n for n in odd) and any(n.split("/")[1].startswith("-") for n in odd)
    assert any(unicodedata.category(ch) == "Lo" for n in odd for ch in n)         # CJK
    assert any(ord(ch) > 0xFFFF for n in odd for ch in n)                           # emoji
    assert any(unicodedata.decomposition(ch) for n in odd for ch in n if ord(ch) > 127)  # accents
    items = ingest_path(root, tmp_path / "raw", MemberLimits.from_params(load(CurateSettings, ROOT / "params.yaml")), source="demo")
    assert sorted(i.source_name for i in items) == sorted(table)


def test_every_file_gets_its_expected_outcome(demo, curated):
    _, table, _ = demo
    outcome, scores, _ = curated
    wrong = {name: (expected, outcome[name], scores.get(name))
             for name, expected in sorted(table.items()) if outcome[name] != expected}
    assert not wrong, "\n".join(f"{n}: expected {e}, got {g}, scores {s}" for n, (e, g, s) in wrong.items())


def test_near_duplicate_keeps_the_original(demo, curated, params):
    _, table, _ = demo
    _, _, near = curated
    assert near, "the demo plants a near duplicate"
    for dropped, (kept, distance) in near.items():
        assert table[kept] == ACCEPTED and distance <= params.dup_max_distance
        assert table[dropped] == "duplicate"


def test_accepted_images_are_not_near_duplicates_of_each_other(demo, curated, params):
    _, table, _ = demo
    _, scores, _ = curated
    accepted = sorted(n for n, r in table.items() if r == ACCEPTED)
    close = [(a, b, hamming(scores[a]["phash"], scores[b]["phash"]))
             for a, b in itertools.combinations(accepted, 2)
             if hamming(scores[a]["phash"], scores[b]["phash"]) <= params.dup_max_distance]
    assert not close
