"""The per-image work that runs in the pool's worker processes.

Kept free of Prefect on purpose: the pool's fork server imports only this module and what it needs
(decode, filters, detectors, matte), once per process, and forks every worker from there.
"""
from __future__ import annotations

from dataclasses import asdict

from tasks.curation.decode import DecodeError, decode, probe
from tasks.curation.detectors import DETECT_SIDE, Box, content_verdict
from tasks.curation.filters import cheap_scores, cheap_verdict, size_verdict
from tasks.curation.matte import crop_and_matte, make_matter
from tasks.common.settings import CurateSettings


HEADER = ("width", "height", "format", "mode", "frames")  # the scores of an image rejected from its header


def screen_cheap_one(path: str, params: CurateSettings) -> dict:
    """{"reason": word|None, "scores": {...}} from a draft-mode (or box-reduced) thumbnail.

    The size is judged from the header first: a too small or too elongated image is never decoded, so a
    958-byte 300000x1 PNG costs nothing (issue 15). An image whose header was read but whose pixels fail to decode
    also carries "header" (for redecide_cheap; the screening drops it from the result).
    """
    header = None
    try:
        head = probe(path)
        header = {"width": head.width, "height": head.height, "format": head.format, "mode": head.mode,
                  "frames": head.frames}
        size = size_verdict(head.width, head.height, params)
        if size:
            return {"reason": size, "scores": header}
        d = decode(path, min_side=params.blur_size)
    except DecodeError as e:
        failed = {"reason": e.reason, "scores": {"error": e.detail[:200]}}
        return failed if header is None else {**failed, "header": header}
    scores = cheap_scores(d.rgb, d.width, d.height, params)
    scores.update(format=d.format, mode=d.mode, frames=d.frames)
    return {"reason": cheap_verdict(scores, params), "scores": scores}


def redecide_cheap(measured: dict, params: CurateSettings) -> dict | None:
    """screen_cheap_one's result under `params`' thresholds, from its result under other thresholds (the same
    thumbnail size): the cheap filters only judge scores, so no pixel is decoded again. None when the pixels were
    never measured (the header rejected the image) and the header no longer does."""
    scores = measured["scores"]
    header = measured.get("header", scores)
    if "width" in header:  # the header was read: its checks come first, as in screen_cheap_one
        size = size_verdict(header["width"], header["height"], params)
        if size:
            return {"reason": size, "scores": {k: header[k] for k in HEADER}}
    if "error" in scores:
        return {"reason": measured["reason"], "scores": scores}
    if "blur_var" not in scores:
        return None
    return {"reason": cheap_verdict(scores, params), "scores": scores}


def screen_content_one(path: str, params: CurateSettings) -> dict:
    """Faces and text on a bounded thumbnail; the face box comes back in full-size pixels."""
    d = decode(path, min_side=DETECT_SIDE // 2)
    reason, scores, face = content_verdict(d.rgb, params)
    box = None
    if face is not None:
        k = d.width / d.rgb.shape[1]
        box = {name: int(round(v * k)) for name, v in asdict(face).items()}
    return {"reason": reason, "scores": scores, "face_box": box}


def render_one(job: tuple[str, dict | None], params: CurateSettings) -> tuple[bytes, dict]:
    path, face_box = job
    matter = make_matter(params.matte, params.rembg_model, params.matte_mask)  # cached per process: one rembg session
    # Decoded at no less than the output side (JPEG draft, else a box reduction): memory follows the
    # resolution, not the input's size. The face box comes in full-size pixels.
    d = decode(path, min_side=params.resolution)
    k = d.rgb.shape[1] / d.width
    face = Box(**{n: int(round(v * k)) for n, v in face_box.items()}) if face_box else None
    return crop_and_matte(d.rgb, params.resolution, matter, face_box=face)
