"""Generation from a trained generator: images from seeds (with truncation), grids, and interpolation.

A seed always maps to the same latent (numpy's RandomState(seed), as the reference's generate.py), so
the same seed gives the same image whatever the batch it is generated in.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.arch import family
from models.checkpoint import CheckpointError, load_checkpoint


def z_from_seeds(seeds: list[int], z_dim: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1,1] NCHW → uint8 NHWC."""
    return (images.clamp(-1, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def resample(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Images at `resolution` (area when shrinking, bicubic when enlarging); unchanged when None or equal."""
    if not resolution or resolution == images.shape[-1]:
        return images
    mode = "area" if resolution < images.shape[-1] else "bicubic"
    return F.interpolate(images, size=(resolution, resolution), mode=mode)


def build_generator(arch: dict) -> torch.nn.Module:
    """An untrained generator of a recorded architecture (a checkpoint's `arch` entry)."""
    return family(arch["name"]).generator(arch["net"])


def load_generator(ckpt: str | Path, follow_links: bool = True) -> tuple[torch.nn.Module, dict]:
    """G_ema of a checkpoint (full or best.pt), rebuilt from its recorded architecture; eval mode. A file that
    is not a generator snapshot is a one-line CheckpointError naming it."""
    state = load_checkpoint(ckpt, follow_links=follow_links)
    arch = state.get("arch")
    if not isinstance(arch, dict) or not isinstance(state.get("G_ema"), dict):
        raise CheckpointError(f"{ckpt} is not a generator snapshot (no arch and G_ema entries)")
    try:
        G = build_generator(arch)
        G.load_state_dict(state["G_ema"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:  # a recorded arch or weights that do not fit
        raise CheckpointError(f"{ckpt}: its generator does not rebuild ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:160]})") from None
    return G.eval().requires_grad_(False), arch


def _pggan_stage(arch: dict, resolution: int | None) -> tuple[int, float]:
    """The stage to draw a PGGAN at: the one of `resolution` when it is a stage already grown, else the
    stage (and fade-in alpha) training had reached."""
    from models.pggan import resolution_stage

    stage, alpha = arch.get("stage", resolution_stage(arch["net"]["resolution"])), arch.get("alpha", 1.0)
    if resolution and resolution >= 4 and not resolution & (resolution - 1) and resolution_stage(resolution) < stage:
        return resolution_stage(resolution), 1.0
    return stage, alpha


@torch.no_grad()
def synthesize(G: torch.nn.Module, arch: dict, z: torch.Tensor, truncation_psi: float = 1.0,
               resolution: int | None = None) -> torch.Tensor:
    """Images in [-1,1]. StyleGAN2 with constant noise (deterministic; StyleGAN3 has none); PGGAN at the stage
    it has grown to, or at `resolution` when that is an earlier stage. Resampled to `resolution` otherwise."""
    if family(arch["name"]).progressive:
        stage, alpha = _pggan_stage(arch, resolution)
        images = G(z, stage=stage, alpha=alpha)
    else:
        images = G(z, truncation_psi=truncation_psi, noise_mode="const", update_w_avg=False)
    return resample(images, resolution)


def images_from_seeds(G, arch: dict, seeds: list[int], truncation_psi: float = 1.0,
                      resolution: int | None = None, batch: int = 16) -> np.ndarray:
    return images_from_z(G, arch, z_from_seeds(seeds, arch["net"]["z_dim"]), truncation_psi, resolution, batch)


def images_from_z(G, arch: dict, z: torch.Tensor, truncation_psi: float = 1.0, resolution: int | None = None,
                  batch: int = 16) -> np.ndarray:
    """uint8 NHWC images of latents z [N, z_dim], `batch` at a time."""
    device = next(G.parameters()).device  # latents follow the generator (a GPU evaluation)
    out = [to_uint8(synthesize(G, arch, z[i:i + batch].to(device), truncation_psi, resolution))
           for i in range(0, len(z), batch)]
    return np.concatenate(out)


def neighbour_latents(seed: int, n: int, z_dim: int, spread: float = 0.3) -> torch.Tensor:
    """n latents around seed's: row 0 is seed's own z, the others (z + spread·e)/sqrt(1 + spread²) with e drawn
    from a stream of its own for that seed (so a seed always has the same neighbours). The scaling keeps each
    row a standard Gaussian, the distribution G was trained on, whatever the spread."""
    z = z_from_seeds([seed], z_dim)
    eps = torch.from_numpy(np.random.default_rng([seed, 1]).standard_normal((n - 1, z_dim))).float()
    return torch.cat([z, (z + spread * eps) / math.sqrt(1 + spread * spread)])


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of rows of a and b by t [N] (Gaussian latents keep their norm)."""
    a_n, b_n = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    omega = torch.acos((a_n * b_n).sum(-1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None]
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def interpolation_frames(G, arch: dict, seeds: list[int], frames: int, truncation_psi: float = 1.0,
                         resolution: int | None = None, batch: int = 16) -> np.ndarray:
    """`frames` uint8 images travelling seeds[0] → seeds[1] → ... → seeds[0] (a loop), at even steps:
    linear in W for StyleGAN2/3 (where the reference interpolates), slerp in Z for PGGAN. Frame 0 is seeds[0]'s
    image from images_from_seeds."""
    if len(seeds) < 2 or frames < len(seeds):
        raise ValueError(f"need at least 2 seeds and as many frames as seeds (got {len(seeds)} seeds, {frames} frames)")
    z = z_from_seeds(seeds, arch["net"]["z_dim"]).to(next(G.parameters()).device)
    pos = torch.arange(frames, dtype=torch.float64) * len(seeds) / frames  # position along the loop
    k = pos.floor().long()
    t = (pos - k).float().to(z.device)
    start, end = k, (k + 1) % len(seeds)
    out, in_w = [], family(arch["name"]).truncation  # a mapping network to interpolate through
    for i in range(0, frames, batch):
        s, e, tt = start[i:i + batch], end[i:i + batch], t[i:i + batch]
        if in_w:
            w = G.mapping(z, truncation_psi, update_w_avg=False)  # [S, num_ws, w_dim]
            ws = torch.lerp(w[s], w[e], tt[:, None, None])
            images = resample(G.synthesis(ws, noise_mode="const"), resolution)
        else:
            images = synthesize(G, arch, slerp(z[s], z[e], tt), resolution=resolution)
        out.append(to_uint8(images))
    return np.concatenate(out)


def grid(images: np.ndarray, cols: int | None = None) -> Image.Image:
    n, h, w, _ = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return Image.fromarray(canvas)


GIF_COMMENT = b"ganflow morph"  # marks a GIF as ours: a rerun may replace it, never someone else's file


def save_gif(frames: np.ndarray, fp, fps: float) -> None:
    """Frames (N x H x W x 3 uint8) as a GIF that loops forever, to a path or a binary file object."""
    pics = [Image.fromarray(f) for f in frames]
    pics[0].save(fp, "GIF", save_all=True, append_images=pics[1:], loop=0, duration=round(1000 / fps),
                 optimize=False, comment=GIF_COMMENT)
