"""Quality filters, each both ways, on scikit-image's bundled real photos and synthetic cases.

Thresholds come from the repo's params.yaml, so these tests also catch a threshold change that would
start rejecting clean photos (or stop rejecting faces, text, blur and grey images).
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import imagehash
import numpy as np
import pytest
import skimage.data
from PIL import Image

import tasks.curation.detectors as detectors
from tasks.curation.detectors import Box, content_verdict, detect_faces, text_scores
from tasks.curation.filters import cheap_scores, cheap_verdict, fit_short_side
from tasks.common.settings import CurateSettings, load

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"

# Clean colour photos with no face and no text: none of them may be rejected for content.
CLEAN = ["rocket", "retina", "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle",
         "coffee", "chelsea"]


def _rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    return np.ascontiguousarray(a[..., :3])


def _grey_copy(rgb: np.ndarray) -> np.ndarray:
    """The same photo as grey content stored as 3-channel RGB."""
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _jpeg_roundtrip(rgb: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def params():
    return load(CurateSettings, PARAMS_FILE)


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    out = {}
    for name in ["astronaut", "camera", "page", *CLEAN]:
        img = getattr(skimage.data, name)()
        out[name] = _rgb(img[0] if isinstance(img, tuple) else img)  # stereo_motorcycle: (left, right, disp)
    return out


@pytest.fixture(scope="module")
def sharp_synthetic() -> np.ndarray:
    """A procedural 1024² colour image with hard edges (checkerboard tiles and colour stripes)."""
    yy, xx = np.mgrid[0:1024, 0:1024]
    tiles = ((xx // 32 + yy // 32) % 2).astype(np.uint8)
    return np.stack([tiles * 200 + 20, (xx // 64 % 4 * 60).astype(np.uint8), 235 - tiles * 200], -1)


def _scores(rgb, params):
    return cheap_scores(rgb, rgb.shape[1], rgb.shape[0], params)


# ---------------------------------------------------------------- too_small

@pytest.fixture(scope="module")
def params512(params):
    return params.updated(resolution=512, min_side_fraction=0.8)


def test_min_side_is_fraction_of_resolution(params, params512):
    assert params512.min_side == 410  # round(0.8 * 512)
    assert params.min_side == round(params.min_side_fraction * params.resolution)
    assert params.updated(resolution=1024, min_side_fraction=0.8).min_side == 819


def test_too_small_coffee_rejected_at_512(photos, params512):
    coffee = photos["coffee"]
    assert coffee.shape[:2] == (400, 600)
    s = _scores(coffee, params512)
    assert cheap_verdict(s, params512) == "too_small"
    assert s["width"] == 600 and s["height"] == 400


def test_large_image_kept(photos, params512):
    big = cv2.resize(photos["rocket"], (1536, 1024), interpolation=cv2.INTER_CUBIC)
    assert cheap_verdict(_scores(big, params512), params512) is None


@pytest.mark.parametrize("short,verdict", [(409, "too_small"), (410, None)])
def test_too_small_boundary_uses_reported_size(photos, params512, short, verdict):
    # The verdict uses the full-size width/height (decode may hand over a thumbnail).
    thumb = fit_short_side(photos["rocket"], 256)
    s = cheap_scores(thumb, 900, short, params512)
    assert cheap_verdict(s, params512) == verdict


# ---------------------------------------------------------------- blurry

def test_sharp_rocket_kept_blurred_rejected(photos, params):
    rocket = photos["rocket"]
    sharp = _scores(rocket, params)
    assert sharp["blur_var"] > params.blur_min_var and cheap_verdict(sharp, params) is None
    blurred = _scores(cv2.GaussianBlur(rocket, (0, 0), 3), params)
    assert blurred["blur_var"] < params.blur_min_var
    assert cheap_verdict(blurred, params) == "blurry"


def test_sharp_synthetic_kept_blurred_rejected(sharp_synthetic, params):
    assert cheap_verdict(_scores(sharp_synthetic, params), params) is None
    blurred = cv2.GaussianBlur(sharp_synthetic, (0, 0), 8)
    assert cheap_verdict(_scores(blurred, params), params) == "blurry"


@pytest.mark.parametrize("name", ["astronaut", "stereo_motorcycle"])
def test_moderately_blurred_photo_rejected(photos, params, name):
    # Gaussian sigma 3 at 512-740 px: visibly soft. Scores land between 20 and 60 (not just near 0).
    s = _scores(cv2.GaussianBlur(photos[name], (0, 0), 3), params)
    assert cheap_verdict(s, params) == "blurry", s


def test_blur_threshold_boundary(params):
    base = {"width": 1000, "height": 1000, "gray_chroma": 100.0, "phash": "0" * 16}
    assert cheap_verdict({**base, "blur_var": params.blur_min_var - 0.01}, params) == "blurry"
    assert cheap_verdict({**base, "blur_var": params.blur_min_var}, params) is None


@pytest.mark.parametrize("name", ["rocket", "astronaut", "stereo_motorcycle", "hubble_deep_field"])
def test_blur_score_roughly_size_independent(photos, params, name):
    one = _scores(photos[name], params)["blur_var"]
    two = _scores(cv2.resize(photos[name], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC), params)["blur_var"]
    assert abs(two - one) / one < 0.3, (one, two)


def test_blurred_stays_blurry_when_upscaled(photos, params):
    blurred = cv2.GaussianBlur(photos["rocket"], (0, 0), 3)
    big = cv2.resize(blurred, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    assert cheap_verdict(_scores(big, params), params) == "blurry"


# ---------------------------------------------------------------- grayscale (pixel content, not mode)

def test_camera_is_grayscale(photos, params):
    s = _scores(photos["camera"], params)  # stored as 3 identical channels here
    assert s["gray_chroma"] < params.gray_max_chroma
    assert cheap_verdict(s, params) == "grayscale"


@pytest.mark.parametrize("name", ["astronaut", "rocket"])
def test_rgb_encoded_grey_copy_rejected(photos, params, name):
    colour = _scores(photos[name], params)
    assert colour["gray_chroma"] > 5 * params.gray_max_chroma
    for grey in (_grey_copy(photos[name]), _jpeg_roundtrip(_grey_copy(photos[name]))):
        s = _scores(grey, params)
        assert s["gray_chroma"] < params.gray_max_chroma
        assert cheap_verdict(s, params) == "grayscale"


def test_colour_rocket_kept(photos, params):
    s = _scores(photos["rocket"], params)
    assert s["gray_chroma"] > params.gray_max_chroma and cheap_verdict(s, params) is None


# ---------------------------------------------------------------- faces

def test_astronaut_face_rejected(photos, params):
    assert params.face_mode == "reject"
    reason, scores, box = content_verdict(photos["astronaut"], params)
    assert reason == "face" and scores["faces"] >= 1 and box is None


def test_face_crop_mode(photos, params):
    crop = params.updated(face_mode="crop")
    reason, scores, box = content_verdict(photos["astronaut"], crop)
    assert reason is None and isinstance(box, Box)
    # Eileen Collins' face: roughly x 170-280, y 60-170 in the 512² photo.
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    assert 170 < cx < 280 and 60 < cy < 170 and 60 < box.w < 160, box
    reason, scores, box = content_verdict(photos["rocket"], crop)
    assert (reason, scores["faces"], box) == ("no_face", 0, None)


def test_face_box_in_full_size_coordinates(photos, params):
    small = detect_faces(photos["astronaut"], params)[0]
    big = detect_faces(cv2.resize(photos["astronaut"], (2048, 2048), interpolation=cv2.INTER_CUBIC), params)[0]
    assert abs(big.x - 4 * small.x) < 40 and abs(big.w - 4 * small.w) < 40, (small, big)


# ---------------------------------------------------------------- text

@pytest.fixture(scope="module")
def captioned(photos) -> np.ndarray:
    img = photos["rocket"].copy()
    cv2.putText(img, "SALE 50% OFF", (30, 230), cv2.FONT_HERSHEY_SIMPLEX, 2.5, (255, 255, 255), 8, cv2.LINE_AA)
    return img


def test_big_caption_rejected_as_text(captioned, params):
    reason, scores, _ = content_verdict(captioned, params)
    assert reason == "text", scores
    assert scores["text_area"] > params.text_max_area


def test_single_glyph_shape_is_not_text(photos, params):
    """A big cross reads as "X" with high confidence; one character is a shape, not a caption."""
    img = photos["rocket"].copy()
    cv2.putText(img, "X", (200, 330), cv2.FONT_HERSHEY_SIMPLEX, 8, (255, 255, 255), 16, cv2.LINE_AA)
    loose = params.updated(text_min_chars=1)
    assert content_verdict(img, loose)[0] == "text"  # the rule is what keeps it
    reason, scores, _ = content_verdict(img, params)
    assert reason is None, scores


def test_page_is_text(photos, params):
    reason, s, _ = content_verdict(photos["page"], params)
    assert reason == "text", s
    assert s["text_boxes"] > params.text_max_boxes and s["text_area"] > params.text_max_area, s


def test_text_reader_gets_bgr(monkeypatch, params):
    """rapidocr treats an ndarray as OpenCV BGR; an RGB array would reach the model channel-swapped."""
    seen = []

    def fake_reader(img):
        seen.append(img.copy())
        return None, 0.0

    monkeypatch.setattr(detectors, "text_reader", lambda: fake_reader)
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    assert text_scores(red, params) == {"text_boxes": 0, "text_area": 0.0}
    assert seen[0][0, 0].tolist() == [0, 0, 255]


# ---------------------------------------------------------------- clean photos stay clean

@pytest.mark.parametrize("name", CLEAN)
def test_clean_photo_has_no_face_or_text(photos, params, name):
    reason, scores, _ = content_verdict(photos[name], params)
    assert reason is None, (name, scores)
    assert scores["faces"] == 0 and scores["text_boxes"] == 0


@pytest.mark.parametrize("name", [n for n in CLEAN if n not in ("coffee", "chelsea")])
def test_clean_big_photo_passes_cheap_checks(photos, params, name):
    s = _scores(photos[name], params)
    assert cheap_verdict(s, params) is None, (name, s)


# ---------------------------------------------------------------- perceptual hash

def _distance(a: str, b: str) -> int:
    return imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b)


def test_phash_near_copy_close_other_photo_far(photos, params):
    rocket = photos["rocket"]
    h = _scores(rocket, params)["phash"]
    assert len(h) == 16 and int(h, 16) >= 0
    copy = _jpeg_roundtrip(cv2.resize(rocket, (320, 213), interpolation=cv2.INTER_AREA), quality=60)
    bigger = cv2.resize(rocket, (1280, 854), interpolation=cv2.INTER_CUBIC)
    for variant in (copy, bigger):
        assert _distance(h, _scores(variant, params)["phash"]) <= params.dup_max_distance
    for other in ["astronaut", "stereo_motorcycle", "hubble_deep_field", "retina", "coffee"]:
        assert _distance(h, _scores(photos[other], params)["phash"]) > 2 * params.dup_max_distance, other
