"""Square crop, matte onto white, Lanczos resize to the dataset's resolution, PNG bytes.

Matting modes (params.yaml `curate.matte`):
  rembg    rembg's U^2-Net family, from the file U2NET_HOME/<rembg_model>.onnx (no download, ever)
  grabcut  OpenCV GrabCut from a rectangle, on a downscale (no model file)
  auto     rembg when the model file is there, GrabCut otherwise; `Matter.note` says which and why
  none     no matte: a centre crop with the background kept

GrabCut's mask (params.yaml `curate.matte_mask`):
  full     computed at GRABCUT_SIDE (320) on the long side, upsampled and feathered (the original output)
  reduced  computed at REDUCED_SIDE (160): about 6x less CPU (GrabCut's cost grows faster than its pixels),
           upsampled, and its edge snapped to the image's own edges by a guided filter at the render size

rembg's `new_session("u2net")` checks the file's hash and downloads on a mismatch, which fails offline;
here the file is found first and loaded through rembg's `u2net_custom` session (`model_path=`), which
applies the same pre/post-processing as `u2net` (320², ImageNet mean/std, min-max saliency) without a hash
(IS-Net models go through `dis_custom` the same way).
One session per model file per process: building it is the slow part.

Everything is deterministic: the same input gives byte-identical PNG bytes (GrabCut seeds OpenCV's RNG).
"""
from __future__ import annotations

import functools
import io
import math
import os

import cv2
import numpy as np
from PIL import Image

from tasks.curation.detectors import Box

MODES = ("auto", "rembg", "grabcut", "none")
MASKS = ("full", "reduced")

GRABCUT_SIDE = 320       # GrabCut runs on a downscale with this long side (cost ~ pixels x iterations)
GRABCUT_ITERS = 3        # GrabCut iterations: masks at 3 and 5 barely differ; 3 costs ~30% less
GRABCUT_MARGIN = 0.03    # rect init: this fraction of each side is taken as definite background
MIN_PART = 0.05          # GrabCut specks: foreground parts smaller than this x the largest are dropped
FEATHER = 0.6            # Gaussian sigma of the upscaled mask's edge, in downscale pixels
REDUCED_SIDE = 160       # matte_mask=reduced: GrabCut's long side (cost 130 against 950 ms at 320 on 540² photos)
GUIDE_RADIUS = 2.0       # reduced: guided filter window radius, in reduced-mask pixels (covers its blocky edge)
GUIDE_EPS = 1e-3         # reduced: guided filter regularizer on [0, 1] luma: edges weaker than ~0.03 are smoothed
REMBG_SIDE = {"u2net_custom": 640, "dis_custom": 1024}  # rembg predicts on a downscale this long (2x its input)
MIN_FG, MAX_FG = 0.002, 0.99   # a mask with less (more) foreground than this is empty (full): no matte
SUBJECT_MARGIN = 0.08    # subject square: this fraction of the subject's long side added on each side
MIN_SUBJECT = 0.4        # subject square: at least this fraction of the image's short side (bounds upscaling)
FACE_EXPAND = 2.0        # face crop: the face box's long side times this (hair, chin, some shoulders)
PNG_LEVEL = 6            # zlib level; fixed so the bytes are reproducible

# rembg model names by the session that reads them offline (same input contract as the named session).
_DIS_MODELS = {"isnet-general-use", "isnet-anime"}           # 1024², mean .5, std 1
_UNSUPPORTED = ("birefnet", "bria", "sam", "u2net_cloth_seg", "ben")  # other contracts: not loaded offline
_RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0"


class MatteModelMissing(RuntimeError):
    """matte=rembg, but the model file is not in U2NET_HOME (or cannot be loaded)."""


def u2net_home() -> str:
    """The folder rembg's models are read from: U2NET_HOME, else ~/.u2net (rembg's own rule, so its
    model-path check accepts the files found here)."""
    default = os.path.join(os.getenv("XDG_DATA_HOME", "~"), ".u2net")
    return os.path.expanduser(os.getenv("U2NET_HOME", default))


def find_model(model_name: str, home: str | None = None) -> str | None:
    """`<home>/<name>.onnx` (or rembg's newer `<home>/models/<name>/<name>.onnx`), or None."""
    home = home or u2net_home()
    fname = f"{model_name}.onnx"
    for path in (os.path.join(home, fname), os.path.join(home, "models", model_name, fname)):
        if os.path.isfile(path):
            return path
    return None


def _session_kind(model_name: str) -> str:
    if model_name in _DIS_MODELS:
        return "dis_custom"
    if model_name.lower().startswith(_UNSUPPORTED):
        raise MatteModelMissing(
            f"rembg_model {model_name!r} is not a U^2-Net/IS-Net model ganflow can load offline: "
            f"use u2net, u2netp, u2net_human_seg, silueta, isnet-general-use or isnet-anime")
    return "u2net_custom"   # u2net, u2netp, u2net_human_seg, silueta, or a custom model of that contract


@functools.lru_cache(maxsize=4)
def _rembg_session(kind: str, model_path: str):
    """One rembg session per model file per process."""
    from rembg.session_factory import new_session  # lazy: importing rembg takes ~2 s

    return new_session(kind, model_path=model_path)


def _checked(alpha: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """The alpha, or None and why: an empty or all-foreground mask is a failed matte."""
    fg = float((alpha > 0.5).mean())
    if not np.isfinite(alpha).all() or fg < MIN_FG:
        return None, "empty_mask"
    if fg > MAX_FG:
        return None, "full_mask"
    return alpha, None


def _downscale(rgb: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """At most `side` on the long side (area resampling); returns the image and its scale factor."""
    h, w = rgb.shape[:2]
    k = min(1.0, side / max(h, w))
    if k == 1.0:
        return rgb, 1.0
    return cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA), k


def _drop_specks(fg: np.ndarray) -> np.ndarray:
    """Keep the foreground parts at least MIN_PART the size of the largest (specks would widen the box)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 2:
        return fg
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.concatenate([[False], areas >= MIN_PART * areas.max()])
    return keep[labels].astype(np.float32)


class Matter:
    """No matte. Subclasses return a foreground alpha (float32 HxW in [0, 1]) for an RGB image."""

    name = "none"

    def __init__(self, note: str = "matte: none (centre crop, background kept)"):
        self.note = note

    def estimate(self, rgb: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """(alpha or None, why it is None when a matte was expected: empty_mask, full_mask, grabcut_error...)."""
        return None, None

    def alpha(self, rgb: np.ndarray) -> np.ndarray | None:
        return self.estimate(rgb)[0]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.note!r}>"


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grey guide (float32 HxW, both): `src` smoothed except across the guide's
    edges, so an upsampled mask's blocky edge moves onto the image's own. Box filters only: O(pixels)."""
    size = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, -1, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(guide), box(src)
    a = (box(guide * src) - mean_i * mean_p) / (box(guide * guide) - mean_i * mean_i + eps)
    b = mean_p - a * mean_i
    return box(a) * guide + box(b)


class GrabCutMatter(Matter):
    name = "grabcut"

    def __init__(self, note: str, mask: str = "full"):
        super().__init__(note)
        if mask not in MASKS:
            raise ValueError(f"matte_mask must be one of {'|'.join(MASKS)}, not {mask!r}")
        self.mask = mask

    def estimate(self, rgb):
        h, w = rgb.shape[:2]
        small, k = _downscale(rgb, GRABCUT_SIDE if self.mask == "full" else REDUCED_SIDE)
        sh, sw = small.shape[:2]
        mx, my = max(1, round(sw * GRABCUT_MARGIN)), max(1, round(sh * GRABCUT_MARGIN))
        rect = (mx, my, sw - 2 * mx, sh - 2 * my)
        if rect[2] < 4 or rect[3] < 4:
            return None, "too_small"
        mask = np.zeros((sh, sw), np.uint8)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's GMM init uses OpenCV's (per-thread) RNG: seed it for reproducible masks
        try:
            cv2.grabCut(np.ascontiguousarray(small), mask, rect, bgd, fgd, GRABCUT_ITERS, cv2.GC_INIT_WITH_RECT)
        except cv2.error:
            return None, "grabcut_error"
        fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)
        if fg[my:sh - my, mx:sw - mx].mean() > MAX_FG:
            return None, "full_mask"   # everything inside the rect: GrabCut found no background
        fg = _drop_specks(fg)
        alpha = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR) if k < 1 else fg
        if self.mask == "full":
            alpha = cv2.GaussianBlur(alpha, (0, 0), FEATHER / k)
        else:
            luma = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
            alpha = guided_filter(luma, alpha, max(1, round(GUIDE_RADIUS / k)), GUIDE_EPS)
        return _checked(np.clip(alpha, 0.0, 1.0))


class RembgMatter(Matter):
    name = "rembg"

    def __init__(self, note: str, kind: str, model_path: str):
        super().__init__(note)
        self.model_path = model_path
        self.work_side = REMBG_SIDE[kind]
        self.session = _rembg_session(kind, model_path)

    def estimate(self, rgb):
        h, w = rgb.shape[:2]
        small, k = _downscale(rgb, self.work_side)
        with np.errstate(all="ignore"):  # a constant saliency map divides 0 by 0 in rembg: caught below
            mask = self.session.predict(Image.fromarray(small))[0]
        alpha = np.asarray(mask, np.float32) / 255.0
        if k < 1:
            alpha = cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR)
        return _checked(alpha)


def make_matter(mode: str, model_name: str = "u2net", mask: str = "full") -> Matter:
    """The matter for `curate.matte` / `curate.rembg_model` / `curate.matte_mask` (GrabCut's), cached per process
    (one rembg session).

    Raises ValueError for an unknown mode or mask, MatteModelMissing for mode=rembg without a loadable model file.
    """
    if mode not in MODES:
        raise ValueError(f"matte mode must be one of {'|'.join(MODES)}, not {mode!r}")
    if mask not in MASKS:
        raise ValueError(f"matte_mask must be one of {'|'.join(MASKS)}, not {mask!r}")
    return _make_matter(mode, model_name, u2net_home(), mask)


def _grabcut_note(why: str, mask: str) -> str:
    return f"matte: grabcut ({why}{'' if mask == 'full' else '; mask at reduced size, guided edges'})"


@functools.lru_cache(maxsize=8)
def _make_matter(mode: str, model_name: str, home: str, mask: str = "full") -> Matter:
    if mode == "none":
        return Matter()
    if mode == "grabcut":
        return GrabCutMatter(_grabcut_note("as configured", mask), mask)
    fname = f"{model_name}.onnx"
    path = find_model(model_name, home)
    if path is None:
        if mode == "auto":
            return GrabCutMatter(_grabcut_note(f"no {fname} in {home}; put the file there to use rembg", mask), mask)
        raise MatteModelMissing(
            f"matte=rembg needs {os.path.join(home, fname)}, which is not there: put {fname} "
            f"(from {_RELEASES}/{fname}) in {home}, or set U2NET_HOME to the folder that holds it; "
            f"or set curate.matte to auto to fall back to GrabCut")
    try:
        kind = _session_kind(model_name)
        return RembgMatter(f"matte: rembg ({model_name} from {path})", kind, path)
    except Exception as e:  # a truncated or foreign file: onnxruntime's error says what is wrong with it
        if mode == "auto":
            return GrabCutMatter(_grabcut_note(f"{path} could not be loaded: {e}; replace it to use rembg", mask), mask)
        if isinstance(e, MatteModelMissing):
            raise
        raise MatteModelMissing(f"matte=rembg could not load {path}: {e}") from e


def clear_matter_cache() -> None:
    """Forget the cached matters and rembg sessions (tests; or after dropping a model file in)."""
    _make_matter.cache_clear()
    _rembg_session.cache_clear()


# ---- cropping ---------------------------------------------------------------------------------


def subject_box(alpha: np.ndarray) -> Box | None:
    """Bounding box of the foreground (alpha > 0.5), or None if there is none."""
    ys, xs = np.nonzero(alpha > 0.5)
    if not len(xs):
        return None
    x0, y0 = int(xs.min()), int(ys.min())
    return Box(x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1)


def subject_square(box: Box, height: int, width: int) -> tuple[int, int, int]:
    """(x, y, side): a square centred on the subject with a margin; it may reach outside the image."""
    side = math.ceil(max(box.w, box.h) * (1 + 2 * SUBJECT_MARGIN))
    side = max(side, round(MIN_SUBJECT * min(height, width)), 1)
    cx, cy = box.x + box.w / 2, box.y + box.h / 2
    return math.floor(cx - side / 2), math.floor(cy - side / 2), side


def face_square(face: Box, height: int, width: int) -> tuple[int, int, int]:
    """(x, y, side): the face box's long side times FACE_EXPAND, centred on it, shifted to fit the image."""
    side = min(round(FACE_EXPAND * max(face.w, face.h)), height, width)
    cx, cy = face.x + face.w / 2, face.y + face.h / 2
    x = min(max(math.floor(cx - side / 2), 0), width - side)
    y = min(max(math.floor(cy - side / 2), 0), height - side)
    return x, y, side


def centre_square(height: int, width: int) -> tuple[int, int, int]:
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side


def _cut(img: np.ndarray, x: int, y: int, side: int, fill) -> np.ndarray:
    """The square [x, x+side) x [y, y+side) of img; what lies outside the image is `fill`."""
    h, w = img.shape[:2]
    if 0 <= x and 0 <= y and x + side <= w and y + side <= h:
        return img[y:y + side, x:x + side]
    out = np.full((side, side) + img.shape[2:], fill, img.dtype)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + side, w), min(y + side, h)
    if x1 > x0 and y1 > y0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = img[y0:y1, x0:x1]
    return out


def on_white(rgb: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Composite onto white: 255 - (255 - rgb) * alpha, rounded to uint8."""
    if alpha is None:
        return rgb
    out = 255.0 - (255.0 - rgb.astype(np.float32)) * alpha[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_png(rgb: np.ndarray, resolution: int) -> bytes:
    """Lanczos resize of a square RGB image to resolution², as PNG bytes (no metadata: reproducible)."""
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def crop_and_matte(rgb: np.ndarray, resolution: int, matter: Matter,
                   face_box: Box | None = None) -> tuple[bytes, dict]:
    """A resolution² RGB PNG of the image's subject on white, and what was done.

    face_box (face_mode=crop): a square around the face (FACE_EXPAND x), inside the image, then matte it.
    Otherwise matte the whole image and take a square around the subject (white padding where the square
    leaves the image); with no matte, or when the matte fails, a centre square at the short side.

    info: {"matte": matter.name, "matte_fallback": bool, "fallback_reason": str | None,
           "crop": "face" | "subject" | "centre", "crop_box": [x, y, side, side] (source pixels; may reach
           outside the image where padded), "subject_box": [x, y, w, h] or None (source pixels)}.
    """
    h, w = rgb.shape[:2]
    if face_box is not None:
        crop = "face"
        x, y, side = face_square(face_box, h, w)
        region = rgb[y:y + side, x:x + side]
        alpha, reason = matter.estimate(region)
        box = subject_box(alpha) if alpha is not None else None
        sbox = [box.x + x, box.y + y, box.w, box.h] if box else None
        square = on_white(region, alpha)
    else:
        alpha, reason = matter.estimate(rgb)
        box = subject_box(alpha) if alpha is not None else None
        if box is None:
            crop, sbox = "centre", None
            x, y, side = centre_square(h, w)
            square = rgb[y:y + side, x:x + side]
        else:
            crop, sbox = "subject", [box.x, box.y, box.w, box.h]
            x, y, side = subject_square(box, h, w)
            # mypy: a box implies alpha
            square = on_white(_cut(rgb, x, y, side, 255), _cut(alpha, x, y, side, 0.0))  # type: ignore[arg-type]
    info = {
        "matte": matter.name,
        "matte_fallback": reason is not None,
        "fallback_reason": reason,
        "crop": crop,
        "crop_box": [int(x), int(y), int(side), int(side)],
        "subject_box": sbox,
    }
    return to_png(square, resolution), info
