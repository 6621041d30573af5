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

from models.checkpoint import load_checkpoint


def z_from_seeds(seeds: list[int], z_dim: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds])).float()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1,1] NCHW → uint8 NHWC."""
    return (images.clamp(-1, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def load_generator(ckpt: str | Path) -> tuple[torch.nn.Module, dict]:
    """G_ema of a checkpoint (full or best.pt), rebuilt from its recorded architecture; eval mode."""
    state = load_checkpoint(ckpt)
    arch = state["arch"]
    if arch["name"] == "stylegan2":
        from models.stylegan2 import Generator, StyleGAN2Config

        G = Generator(StyleGAN2Config.from_dict(arch["net"]))
    else:
        raise ValueError(f"{ckpt}: unknown architecture {arch['name']!r}")
    G.load_state_dict(state["G_ema"])
    return G.eval().requires_grad_(False), arch


@torch.no_grad()
def synthesize(G: torch.nn.Module, arch: dict, z: torch.Tensor, truncation_psi: float = 1.0,
               resolution: int | None = None) -> torch.Tensor:
    """Images in [-1,1]; StyleGAN2 with constant noise (deterministic), resampled to `resolution` if given."""
    if arch["name"] == "stylegan2":
        images = G(z, truncation_psi=truncation_psi, noise_mode="const", update_w_avg=False)
    else:
        images = G(z)
    if resolution and resolution != images.shape[-1]:
        mode = "area" if resolution < images.shape[-1] else "bicubic"
        images = F.interpolate(images, size=(resolution, resolution), mode=mode)
    return images


def images_from_seeds(G, arch: dict, seeds: list[int], truncation_psi: float = 1.0,
                      resolution: int | None = None, batch: int = 16) -> np.ndarray:
    z_dim = arch["net"]["z_dim"]
    out = [to_uint8(synthesize(G, arch, z_from_seeds(seeds[i:i + batch], z_dim), truncation_psi, resolution))
           for i in range(0, len(seeds), batch)]
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
