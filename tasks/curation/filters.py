"""Per-image quality scores and the thresholds that turn them into a reason word.

Cheap scores (size, blur, grayscale, perceptual hash) work on a fixed-size thumbnail, so thresholds do
not depend on the image's size and no full-size work is done where a thumbnail answers the question.
"""
from __future__ import annotations

import cv2
import imagehash
import numpy as np
import scipy.fftpack  # noqa: F401  imagehash.phash imports it on its first call (0.4-0.8 s): paid here, at import,
from PIL import Image  # where the pool's fork server pays it once, not in each worker's first image

from tasks.curation.registry import first_reason, register, registered
from tasks.common.settings import CurateSettings


# fit_short_side never makes an image longer than this many short sides: a 300000x1 strip scaled to a short
# side of 256 would be 58.9 GB. Callers reject such shapes first (size_verdict); this bounds any other caller.
FIT_MAX_ASPECT = 16


def fit_short_side(rgb: np.ndarray, side: int) -> np.ndarray:
    """Resize so the short side is `side` (area resampling: no aliasing that would fake sharpness).

    The output is at most side x (FIT_MAX_ASPECT * side): a longer image is centre-cropped to that first.
    """
    h, w = rgb.shape[:2]
    longest = FIT_MAX_ASPECT * min(h, w)
    if w > longest:
        rgb = rgb[:, (w - longest) // 2:(w - longest) // 2 + longest]
    elif h > longest:
        rgb = rgb[(h - longest) // 2:(h - longest) // 2 + longest]
    h, w = rgb.shape[:2]
    k = side / min(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interp)


def blur_score(rgb_small: np.ndarray) -> float:
    """Variance of the Laplacian of the luma: low means few edges, i.e. blurry."""
    gray = cv2.cvtColor(rgb_small, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def chroma_score(rgb_small: np.ndarray) -> float:
    """99th percentile of the per-pixel max channel difference: ~0 for grey content, in any encoding.

    Computed on uint8 with OpenCV and read off a 256-bin histogram: the same value as np.percentile
    (linear interpolation) at 1/20 of its cost, which made this the slowest cheap check.
    """
    r, g, b = cv2.split(rgb_small)
    spread = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
    cumulative = np.cumsum(np.bincount(spread.ravel(), minlength=256))
    n = int(cumulative[-1])
    pos = 0.99 * (n - 1)
    k = int(pos)
    lo = int(np.searchsorted(cumulative, k, side="right"))           # k-th smallest value
    hi = int(np.searchsorted(cumulative, min(k + 1, n - 1), side="right"))
    return float(lo + (pos - k) * (hi - lo))


def perceptual_hash(rgb_small: np.ndarray) -> str:
    """64-bit DCT perceptual hash as 16 hex digits (Hamming distance ~ visual difference)."""
    return str(imagehash.phash(Image.fromarray(rgb_small)))


def cheap_scores(rgb: np.ndarray, width: int, height: int, params: CurateSettings) -> dict:
    small = fit_short_side(rgb, params.blur_size)
    return {
        "width": width,
        "height": height,
        "blur_var": round(blur_score(small), 3),
        "gray_chroma": round(chroma_score(small), 3),
        "phash": perceptual_hash(small),
    }


@register("too_small", stage="cheap", keys=("resolution", "min_side_fraction"), order=10, header=True)
def too_small(scores: dict, params: CurateSettings) -> str | None:
    return "too_small" if min(scores["width"], scores["height"]) < params.min_side else None


@register("aspect", stage="cheap", keys=("max_aspect",), order=20, header=True)
def aspect(scores: dict, params: CurateSettings) -> str | None:
    w, h = scores["width"], scores["height"]
    return "aspect" if max(w, h) > params.max_aspect * min(w, h) else None


@register("blurry", stage="cheap", keys=("blur_size", "blur_min_var"), order=30)
def blurry(scores: dict, params: CurateSettings) -> str | None:
    return "blurry" if scores["blur_var"] < params.blur_min_var else None


@register("grayscale", stage="cheap", keys=("blur_size", "gray_max_chroma"), order=40)
def grayscale(scores: dict, params: CurateSettings) -> str | None:
    return "grayscale" if scores["gray_chroma"] < params.gray_max_chroma else None


def size_verdict(width: int, height: int, params: CurateSettings) -> str | None:
    """The header checks' verdict (too_small, aspect) from the size alone, before any pixel is decoded or resized."""
    return first_reason(registered("cheap", header=True), {"width": width, "height": height}, params)


def cheap_verdict(scores: dict, params: CurateSettings) -> str | None:
    """The first failing cheap check's reason (registry order), or None when the image passes them all."""
    return first_reason(registered("cheap"), scores, params)
