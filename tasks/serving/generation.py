"""Images and morphing animations from a snapshot: pure functions behind `ganflow generate` and `ganflow morph`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from models.atomic_file import is_png, publish
from models.generate import GIF_COMMENT, grid, images_from_seeds, interpolation_frames, load_generator, save_gif

def is_ganflow_gif(path: Path) -> bool:
    """A GIF `ganflow morph` wrote (its comment says so): the only file at --out that a rerun replaces."""
    try:
        with Image.open(path) as im:
            return im.format == "GIF" and im.info.get("comment") == GIF_COMMENT
    except (OSError, ValueError):
        return False


def _save_png(image: Image.Image, path: Path) -> Path:
    return publish(path, lambda tmp: image.save(tmp, "PNG"), owned=is_png, what="a PNG")


def parse_seeds(text: str, max_count: int | None = None, max_seed: int = 2 ** 32 - 1) -> list[int]:
    """'0-63', '1,5,9' or a mix ('0-3,10') → seeds in the order given. Each seed is 0..max_seed (numpy's
    RandomState takes up to 2**32 - 1); with max_count, more seeds than that are refused before a range is made."""
    seeds: list[int] = []
    rule = f"use a range like 0-63 or a list like 1,5,9 (seeds are 0 to {max_seed})"
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo or lo < 0:
                    raise ValueError
            else:
                lo = hi = int(part)
        except ValueError:
            raise ValueError(f"cannot read seeds {text!r}: {rule}") from None
        if lo < 0 or hi > max_seed:
            raise ValueError(f"seeds {text!r} are out of range: {rule}")
        if max_count is not None and len(seeds) + (hi - lo + 1) > max_count:
            raise ValueError(f"seeds {text!r} are more than {max_count:,} seeds: ask for fewer per call")
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


def seed_image_name(seed: int) -> str:
    return f"seed{seed:04d}.png"


def write_seed_images(snapshot: str | Path, seeds: list[int], out: str | Path, truncation_psi: float = 1.0,
                      resolution: int | None = None, batch: int = 1) -> dict:
    """out/seed<NNNN>.png per seed and out/grid.png. batch=1 (the default) makes each file depend on its seed
    alone, byte for byte (CPU kernels may round differently across batch sizes)."""
    G, arch = load_generator(snapshot)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = images_from_seeds(G, arch, seeds, truncation_psi=truncation_psi, resolution=resolution, batch=batch)
    paths = []
    for seed, img in zip(seeds, images):
        paths.append(_save_png(Image.fromarray(img), out / seed_image_name(seed)))
    grid_path = _save_png(grid(images), out / "grid.png")
    return {"images": [str(p) for p in paths], "grid": str(grid_path), "arch": arch["name"],
            "resolution": int(images.shape[1])}


def _write_mp4(frames: np.ndarray, path: Path, fps: float) -> None:
    try:
        import cv2
    except ImportError:
        raise ValueError(f"no MP4 writer here (OpenCV is not installed): write a GIF instead "
                         f"(--out {path.with_suffix('.gif')})") from None
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise ValueError(f"OpenCV has no MP4 (mp4v) encoder here: write a GIF instead "
                         f"(--out {path.with_suffix('.gif')})")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB → BGR
    finally:
        writer.release()


def write_morph(snapshot: str | Path, seeds: list[int], frames: int, out: str | Path, fps: float = 30.0,
                truncation_psi: float = 1.0, resolution: int | None = None) -> dict:
    """A looping animation seeds[0] → ... → seeds[-1] → seeds[0] (W-lerp for StyleGAN2, Z-slerp for PGGAN)
    as .gif (Pillow, loops forever) or .mp4 (OpenCV when it has an encoder)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"--out must end in .gif or .mp4, not {out.name!r}")
    G, arch = load_generator(snapshot)
    video = interpolation_frames(G, arch, seeds, frames, truncation_psi=truncation_psi, resolution=resolution)
    if suffix == ".gif":
        publish(out, lambda tmp: save_gif(video, tmp, fps), owned=is_ganflow_gif, what="a morph")
    else:  # an MP4 carries no mark of ours: only a new file is written
        publish(out, lambda tmp: _write_mp4(video, tmp, fps), owned=lambda _p: False, what="a morph")
    return {"out": str(out), "frames": len(video), "seeds": seeds, "arch": arch["name"]}
