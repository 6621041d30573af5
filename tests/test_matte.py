"""Crop + matte: mode selection, the rembg path with a tiny hand-built ONNX model, GrabCut, crops, PNG output.

The tiny model has rembg's U^2-Net contract (input 1x3x320x320 float, output 1x1x320x320 saliency):
saliency = sigmoid(k * (R - G)) on the normalized input, i.e. "red things are the subject". It is written
as ONNX protobuf bytes by hand (the `onnx` package is not a dependency), and read by onnxruntime via rembg.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from tasks.curation import matte
from tasks.curation.detectors import Box
from tasks.curation.matte import MatteModelMissing, RembgMatter, crop_and_matte, make_matter

RED, GREEN = (200, 30, 30), (40, 160, 60)


# ---- a tiny ONNX model, as protobuf bytes ------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _msg(field: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _value_info(name: str, shape: list[int]) -> bytes:
    dims = b"".join(_msg(1, _int(1, d)) for d in shape)                 # TensorShapeProto.dim.dim_value
    return _msg(1, name) + _msg(2, _msg(1, _int(1, 1) + _msg(2, dims)))  # TypeProto.tensor_type(FLOAT, shape)


def _tensor(name: str, arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, "<f4")
    return b"".join(_int(1, d) for d in arr.shape) + _int(2, 1) + _msg(8, name) + _msg(9, arr.tobytes())


def _node(op: str, inputs: list[str], output: str) -> bytes:
    return b"".join(_msg(1, i) for i in inputs) + _msg(2, output) + _msg(3, output) + _msg(4, op)


def tiny_saliency_model(weights=(4.0, -4.0, 0.0), bias=0.0) -> bytes:
    """ModelProto: Conv 1x1 (RGB -> 1) then Sigmoid; IR 7, opset 13."""
    graph = (_msg(1, _node("Conv", ["input", "w", "b"], "logits"))
             + _msg(1, _node("Sigmoid", ["logits"], "saliency"))
             + _msg(2, "tiny_u2net")
             + _msg(5, _tensor("w", np.reshape(weights, (1, 3, 1, 1))))
             + _msg(5, _tensor("b", np.array([bias])))
             + _msg(11, _value_info("input", [1, 3, 320, 320]))
             + _msg(12, _value_info("saliency", [1, 1, 320, 320])))
    return _int(1, 7) + _msg(2, "ganflow-tests") + _msg(7, graph) + _msg(8, _msg(1, "") + _int(2, 13))


# ---- fixtures and helpers ----------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    """Every test: an empty U2NET_HOME (never the real ~/.u2net) and no cached matters or sessions."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    matte.clear_matter_cache()
    yield
    matte.clear_matter_cache()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "u2net.onnx"
    path.write_bytes(tiny_saliency_model())
    return path


def disc_image(h=600, w=800, cx=None, cy=None, r=None, fg=RED, bg=GREEN, noise=6.0, seed=0):
    """A coloured disc on a contrasting background, with a little sensor-like noise."""
    cx = w / 2 if cx is None else cx
    cy = h / 2 if cy is None else cy
    r = r or min(h, w) / 4
    yy, xx = np.mgrid[:h, :w]
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = fg
    img += np.random.default_rng(seed).normal(0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_rgb(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img)


def is_white(px) -> bool:
    return bool(np.all(np.asarray(px) >= 250))


def red_mask(rgb: np.ndarray) -> np.ndarray:
    px = rgb.astype(np.int16)
    return (px[..., 0] > 150) & (px[..., 1] < 90) & (px[..., 2] < 90)


def centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def corners(rgb: np.ndarray, k: int = 8) -> list[np.ndarray]:
    return [rgb[:k, :k], rgb[:k, -k:], rgb[-k:, :k], rgb[-k:, -k:]]


# ---- choosing the matter -----------------------------------------------------------------------

def test_auto_falls_back_to_grabcut_and_says_so(tmp_path):
    m = make_matter("auto", "u2net")
    assert m.name == "grabcut"
    assert m.note == f"matte: grabcut (no u2net.onnx in {tmp_path}; put the file there to use rembg)"


def test_auto_uses_rembg_when_the_model_file_is_there(model_file, monkeypatch):
    import pooch

    def no_download(*a, **k):
        raise AssertionError("rembg tried to download a model")

    monkeypatch.setattr(pooch, "retrieve", no_download)
    m = make_matter("auto", "u2net")
    assert m.name == "rembg"
    assert str(model_file) in m.note and m.note.startswith("matte: rembg")
    # one session per process: the same matter and session come back, also through mode=rembg
    assert make_matter("auto", "u2net") is m
    again = make_matter("rembg", "u2net")
    assert isinstance(m, RembgMatter) and isinstance(again, RembgMatter) and again.session is m.session


def test_rembg_mode_without_the_file_says_which_file_to_put_where(tmp_path):
    with pytest.raises(MatteModelMissing) as err:
        make_matter("rembg", "u2netp")
    assert isinstance(err.value, RuntimeError)
    msg = str(err.value)
    assert str(tmp_path / "u2netp.onnx") in msg and "U2NET_HOME" in msg and "auto" in msg


def test_rembg_mode_with_a_broken_file_errors_and_auto_falls_back(tmp_path):
    (tmp_path / "u2net.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(MatteModelMissing, match="could not load"):
        make_matter("rembg", "u2net")
    m = make_matter("auto", "u2net")
    assert m.name == "grabcut" and "could not be loaded" in m.note


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="auto\\|rembg\\|grabcut\\|none"):
        make_matter("magic", "u2net")


# ---- rembg with the tiny model -----------------------------------------------------------------

def test_rembg_centred_subject_on_white(model_file):
    png, info = crop_and_matte(disc_image(), 512, make_matter("rembg", "u2net"))
    out = png_rgb(png)
    assert out.shape == (512, 512, 3)
    assert info["matte"] == "rembg" and not info["matte_fallback"] and info["crop"] == "subject"
    assert all(is_white(c) for c in corners(out))
    assert red_mask(out[246:266, 246:266]).all()
    assert not (np.abs(out.astype(int) - GREEN).sum(axis=2) < 60).any()  # no green background left


def test_rembg_subject_box_crop_centres_an_off_centre_subject(model_file):
    img = disc_image(600, 900, cx=200, cy=180, r=110)
    png, info = crop_and_matte(img, 512, make_matter("rembg", "u2net"))
    out = png_rgb(png)
    x, y, w, h = info["subject_box"]
    assert abs(x + w / 2 - 200) <= 3 and abs(y + h / 2 - 180) <= 3 and abs(w - 220) <= 6
    cx, cy = centroid(red_mask(out))
    assert abs(cx - 255.5) < 4 and abs(cy - 255.5) < 4
    # the subject fills the square up to the margin: its diameter is ~1/(1 + 2 * margin) of the side
    span = np.nonzero(red_mask(out).any(axis=0))[0]
    assert abs((span[-1] - span[0] + 1) / 512 - 1 / (1 + 2 * matte.SUBJECT_MARGIN)) < 0.03


def test_subject_square_past_the_edge_is_padded_white(model_file):
    img = disc_image(400, 600, cx=95, cy=200, r=90)   # inside, but its margin square reaches past the edge
    png, info = crop_and_matte(img, 256, make_matter("rembg", "u2net"))
    out = png_rgb(png)
    assert info["crop_box"][0] < 0
    assert out.shape == (256, 256, 3) and all(is_white(c) for c in corners(out))
    cx, cy = centroid(red_mask(out))
    assert abs(cx - 127.5) < 3 and abs(cy - 127.5) < 3


def test_rembg_constant_saliency_falls_back_to_no_matte(tmp_path):
    (tmp_path / "u2net.onnx").write_bytes(tiny_saliency_model(weights=(0.0, 0.0, 0.0)))
    img = disc_image()
    png, info = crop_and_matte(img, 128, make_matter("auto", "u2net"))
    assert info["matte"] == "rembg" and info["matte_fallback"] and info["fallback_reason"] == "empty_mask"
    assert info["crop"] == "centre" and not is_white(png_rgb(png)[0, 0])


def test_rembg_output_is_deterministic(model_file):
    img = disc_image(500, 700, cx=300, cy=260)
    m = make_matter("rembg", "u2net")
    assert crop_and_matte(img, 512, m)[0] == crop_and_matte(img, 512, m)[0]


# ---- GrabCut -----------------------------------------------------------------------------------

def test_grabcut_whites_out_the_background_and_keeps_the_object():
    img = disc_image(480, 640, r=130)
    png, info = crop_and_matte(img, 512, make_matter("grabcut", "u2net"))
    out = png_rgb(png)
    assert info["matte"] == "grabcut" and not info["matte_fallback"] and info["crop"] == "subject"
    assert out.shape == (512, 512, 3) and all(is_white(c) for c in corners(out))
    red = red_mask(out)
    expected = np.pi / 4 / (1 + 2 * matte.SUBJECT_MARGIN) ** 2     # disc area / square area
    assert abs(red.mean() - expected) < 0.05
    cx, cy = centroid(red)
    assert abs(cx - 255.5) < 4 and abs(cy - 255.5) < 4
    greenish = np.abs(out.astype(int) - GREEN).sum(axis=2) < 60
    assert greenish.mean() < 0.002


def test_grabcut_is_deterministic_whatever_the_rng_state():
    img = np.ascontiguousarray(data.coffee()[::2, ::2])  # a real photo: GrabCut's GMM init depends on the RNG
    m = make_matter("grabcut", "u2net")
    first = crop_and_matte(img, 512, m)[0]
    cv2.setRNGSeed(12345)
    cv2.randu(np.empty((64, 64), np.float32), 0, 1)   # move OpenCV's RNG on
    assert crop_and_matte(img, 512, m)[0] == first


def test_grabcut_on_a_featureless_image_falls_back_to_a_centre_crop():
    img = np.full((300, 400, 3), (90, 120, 200), np.uint8)
    png, info = crop_and_matte(img, 64, make_matter("grabcut", "u2net"))
    assert info["matte_fallback"] and info["fallback_reason"] in ("empty_mask", "full_mask", "grabcut_error")
    assert info["crop"] == "centre" and info["crop_box"] == [50, 0, 300, 300]
    assert (np.abs(png_rgb(png).astype(int) - (90, 120, 200)) <= 1).all()


def test_grabcut_on_a_real_photo_keeps_the_cup():
    png, info = crop_and_matte(data.coffee(), 256, make_matter("grabcut", "u2net"))
    out = png_rgb(png)
    assert not info["matte_fallback"] and all(is_white(c) for c in corners(out))
    assert 0.2 < (out.min(axis=2) < 240).mean() < 0.9   # a subject, and white around it


# ---- no matte, non-square input, face crop -----------------------------------------------------

def test_none_is_a_centre_crop_with_colours_unchanged():
    img = data.rocket()                                     # 427 x 640
    png, info = crop_and_matte(img, 256, make_matter("none", "u2net"))
    out = png_rgb(png)
    assert info == {"matte": "none", "matte_fallback": False, "fallback_reason": None, "crop": "centre",
                    "crop_box": [106, 0, 427, 427], "subject_box": None}
    ref = np.asarray(Image.fromarray(img[:, 106:533]).resize((256, 256), Image.Resampling.LANCZOS))
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("shape", [(300, 700), (900, 350), (333, 333)])
def test_any_aspect_ratio_gives_a_square_output(shape):
    img = disc_image(*shape, noise=0.0)
    for mode in ("none", "grabcut"):
        out = png_rgb(crop_and_matte(img, 96, make_matter(mode, "u2net"))[0])
        assert out.shape == (96, 96, 3)


def test_face_box_crop_is_twice_the_face_inside_the_image():
    img = data.astronaut()                                  # 512 x 512, face at about (177, 67, 93, 93)
    face = Box(177, 67, 93, 93)
    png, info = crop_and_matte(img, 128, make_matter("none", "u2net"), face_box=face)
    assert info["crop"] == "face" and info["crop_box"] == [130, 20, 186, 186]
    ref = np.asarray(Image.fromarray(img[20:206, 130:316]).resize((128, 128), Image.Resampling.LANCZOS))
    assert np.array_equal(png_rgb(png), ref)
    # near the edge the square is shifted (not shrunk or padded) to stay inside the image
    _, info = crop_and_matte(img, 128, make_matter("none", "u2net"), face_box=Box(5, 430, 60, 60))
    assert info["crop_box"] == [0, 392, 120, 120]
    # a face bigger than half the image: the square is clamped to the image's short side
    _, info = crop_and_matte(img[:300], 128, make_matter("none", "u2net"), face_box=Box(100, 50, 200, 200))
    assert info["crop_box"] == [50, 0, 300, 300]


def test_face_box_crop_is_then_matted(model_file):
    img = disc_image(600, 800, cx=560, cy=300, r=80)
    png, info = crop_and_matte(img, 128, make_matter("auto", "u2net"), face_box=Box(490, 230, 140, 140))
    out = png_rgb(png)
    assert info["crop"] == "face" and info["matte"] == "rembg" and not info["matte_fallback"]
    assert info["crop_box"] == [420, 160, 280, 280]
    assert all(is_white(c) for c in corners(out)) and red_mask(out[54:74, 54:74]).all()
    x, y, w, h = info["subject_box"]                        # reported in source pixels
    assert abs(x + w / 2 - 560) <= 3 and abs(y + h / 2 - 300) <= 3


# ---- GrabCut's mask at a reduced size (curate.matte_mask: reduced) -------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_reduced_mask_is_refined_onto_the_subjects_edge_at_full_size():
    """The mask is found at 160 px, but its edge is placed at the render size by the guided filter: on a disc the
    matte matches the true disc better than the 160 px mask upsampled (0.980) and as well as the full mask."""
    h = w = 540
    img = disc_image(h, w, r=150)
    yy, xx = np.mgrid[:h, :w]
    disc = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= 150 ** 2).astype(np.float32)
    reduced, why = make_matter("grabcut", mask="reduced").estimate(img)
    full, _ = make_matter("grabcut").estimate(img)
    assert why is None and reduced.shape == (h, w)
    assert iou(reduced, disc) >= 0.998 and iou(full, disc) >= 0.99
    assert iou(reduced, full) >= 0.98


def test_reduced_mask_agrees_with_the_full_one_on_single_subject_photos():
    """The demo's photos with one clear subject (the cup, the retina at its render decode size): the reduced mask
    agrees with today's full one, IoU >= 0.95 per image (measured 0.989 and 0.989).

    Not asserted on the scene photos (rocket 0.58, astronaut 0.83, hubble 0.50, chelsea 0.18): GrabCut from a
    rectangle has no stable answer there, even at full size (the full mask at 300 px against 320 px: rocket 0.68,
    hubble 0.68), which is why `full` stays the default (README, benchmarks)."""
    retina = cv2.resize(data.retina(), (706, 706), interpolation=cv2.INTER_AREA)  # draft decode for 512² output
    got = {}
    for name, img in (("coffee", data.coffee()), ("retina", retina)):
        full, _ = make_matter("grabcut").estimate(img)
        reduced, why = make_matter("grabcut", mask="reduced").estimate(img)
        assert why is None and full is not None
        got[name] = round(iou(reduced, full), 3)
    print("IoU of the reduced mask against the full one:", got)
    assert all(v >= 0.95 for v in got.values()), got


def test_reduced_mask_is_its_own_setting_and_cache_key(tmp_path):
    from tasks.common.settings import CurateSettings
    from tasks.curation.render import render_cache

    m = make_matter("grabcut", mask="reduced")
    assert isinstance(m, matte.GrabCutMatter) and m.mask == "reduced"
    assert m.note == "matte: grabcut (as configured; mask at reduced size, guided edges)"
    assert make_matter("grabcut").note == "matte: grabcut (as configured)"
    with pytest.raises(ValueError, match="full\\|reduced"):
        make_matter("grabcut", mask="tiny")
    full, reduced = CurateSettings(), CurateSettings(matte_mask="reduced")
    assert full.matte_mask == "full"  # the default output is unchanged
    key = {p.matte_mask: render_cache(p, str(tmp_path), "grabcut").dir.name for p in (full, reduced)}
    assert key["reduced"] == key["full"] + "-reduced"
    # rembg ignores it: renders cached with rembg stay valid
    assert render_cache(reduced, str(tmp_path), "rembg").dir == render_cache(full, str(tmp_path), "rembg").dir
