"""Content detectors backed by models that ship inside packages (no downloads):
faces with OpenCV's Haar cascade (OpenCV 4.x ships it; 5.x does not), text with rapidocr's ONNX models.

Each detector is built once per thread and reused: loading is the slow part, and neither OpenCV's cascade nor
rapidocr may be used by two threads at once (batches run in threads: Prefect's, or a Dask worker's).
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

from tasks.curation.registry import first_reason, register, registered
from tasks.common.settings import CurateSettings

# Detection runs on a bounded downscale: enough for faces and captions, bounded cost on big photos.
DETECT_SIDE = 640
FACE_CASCADE = "haarcascade_frontalface_default.xml"


class DetectorMissing(RuntimeError):
    """A detector's model file is not where its package should have put it."""


def _per_thread(build):
    """build() once per thread: the object is the thread's own."""
    local = threading.local()

    @functools.wraps(build)
    def get():
        if not hasattr(local, "value"):
            local.value = build()
        return local.value

    return get


@_per_thread
def face_cascade() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, FACE_CASCADE)  # type: ignore[attr-defined]  # cv2's stubs omit cv2.data
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise DetectorMissing(f"OpenCV Haar cascade not found at {path}: install opencv-python<5 (5.x ships none)")
    return cascade


@_per_thread
def text_reader():
    from rapidocr_onnxruntime import RapidOCR  # imported lazily: it loads three ONNX sessions

    # One ONNX thread per reader: images run in parallel already (one pool process or Dask thread per core).
    # ONNX Runtime's default, a spinning thread per core in every reader, oversubscribed the cores and
    # doubled the time per image on 2 cores (README, curation at scale). Same boxes, texts and scores.
    # Detection at the size we hand it: rapidocr's default (short side raised to 736) upscaled a 256² image
    # 8×, undoing _downscale, for 7× the CPU per image (163 -> 23 ms) and false boxes read into upscaled
    # shapes. Same verdicts on the captioned, page and clean test photos.
    return RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1,
                    det_limit_type="max", det_limit_side_len=DETECT_SIDE)


def _downscale(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """At most DETECT_SIDE on the long side; returns the image and the factor back to full size."""
    h, w = rgb.shape[:2]
    if max(h, w) <= DETECT_SIDE:
        return rgb, 1.0
    k = DETECT_SIDE / max(h, w)
    return cv2.resize(rgb, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA), 1.0 / k


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int


def detect_faces(rgb: np.ndarray, params: CurateSettings) -> list[Box]:
    """Frontal faces, largest first, in full-size pixel coordinates."""
    small, back = _downscale(rgb)
    gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
    min_px = max(20, int(params.face_min_fraction * min(gray.shape)))
    found = face_cascade().detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=params.face_min_neighbors, minSize=(min_px, min_px))
    boxes = [Box(*(int(round(v * back)) for v in f)) for f in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: (-b.w * b.h, b.x, b.y))


def text_scores(rgb: np.ndarray, params: CurateSettings) -> dict:
    """Confident text boxes (recognition confidence >= threshold) and the area fraction they cover."""
    small, _ = _downscale(rgb)
    # rapidocr takes an ndarray as BGR (OpenCV order); only paths and PIL images are converted for it.
    result, _ = text_reader()(cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    mask = np.zeros(small.shape[:2], np.uint8)
    boxes = 0
    for quad, text, conf in result or []:
        if float(conf) < params.text_min_confidence:
            continue  # recognition confidence drops the detector's false boxes
        if sum(ch.isalnum() for ch in str(text)) < params.text_min_chars:
            continue  # a lone ring or cross read as "O" or "X" is a shape, not a caption
        boxes += 1
        cv2.fillPoly(mask, [np.asarray(quad, np.int32)], 1)
    return {"text_boxes": boxes, "text_area": round(float(mask.mean()), 5)}


@dataclass
class ContentImage:
    """What the content filters see (the pixels) and leave behind (scores, the face box to crop to)."""
    rgb: np.ndarray
    scores: dict = field(default_factory=dict)
    face: Box | None = None


@register("face", "no_face", stage="content", keys=("face_mode", "face_min_fraction", "face_min_neighbors"),
          order=10)
def face(image: ContentImage, params: CurateSettings) -> str | None:
    faces = detect_faces(image.rgb, params)
    image.scores["faces"] = len(faces)
    if params.face_mode == "reject" and faces:
        return "face"
    if params.face_mode == "crop" and not faces:
        return "no_face"
    image.face = faces[0] if faces else None
    return None


@register("text", stage="content",
          keys=("text_min_confidence", "text_min_chars", "text_max_area", "text_max_boxes"), order=20)
def text(image: ContentImage, params: CurateSettings) -> str | None:
    found = text_scores(image.rgb, params)
    image.scores.update(found)
    return "text" if found["text_area"] > params.text_max_area or found["text_boxes"] > params.text_max_boxes else None


def content_verdict(rgb: np.ndarray, params: CurateSettings) -> tuple[str | None, dict, Box | None]:
    """(reason or None, scores, face box to crop to in face_mode=crop): the registered content filters in order,
    up to the first that fails (a rejected image is not measured further)."""
    image = ContentImage(rgb)
    reason = first_reason(registered("content"), image, params)
    return reason, image.scores, image.face
