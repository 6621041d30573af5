"""DINOv2 features for FD-DINOv2, precision/recall and the memorization audit, from Meta's published
`dinov2_vit{s,b,l}14_pretrain.pth` on disk (the files torch.hub fetches; nothing is downloaded here).

- The network is timm's DINOv2 ViT (`vit_{small,base,large}_patch14_dinov2`, pinned in pyproject.toml); timm's
  checkpoint_filter_fn reads Meta's key layout. The variant is read from the state dict's shapes.
- Meta's model resamples its 37×37 position embedding for every 224² input (bicubic, scale factor (16 + 0.1)/37,
  no antialias); timm would resample it differently (antialiased, to a size), so it is resampled here once, Meta's
  way, and timm's model is built for 224² inputs. Features then equal the official model's (tests/test_dinov2.py).
- Preprocessing as dgm-eval's DINOv2 encoder (Stein et al. 2023), which EDM2's FD_DINOv2 follows: PIL bicubic
  resize of the uint8 RGB image to 224², /255, ImageNet mean/std. Feature: the CLS token after the final norm.
- The file is read once, hashed and loaded from memory with weights_only=True (tasks.evaluation.weights_file).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.evaluation.weights_file import RANDOM, read_state_dict, resolve_path

ENV_WEIGHTS = "GANFLOW_DINOV2_WEIGHTS"
WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_{v}/dinov2_{v}_pretrain.pth"
INPUT_SIZE, PATCH = 224, 14
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as dgm-eval
POS_OFFSET = 0.1  # Meta's interpolate_offset (a historical work-around it keeps for compatibility)
RANDOM_FILE = "dinov2-vits14-random-init.pt"
RANDOM_NOTE = "random-initialized DINOv2 ViT-S/14 (evaluate.dinov2_weights: random): FD-DINOv2 not comparable"


@dataclass(frozen=True)
class Variant:
    name: str        # Meta's: vits14, vitb14, vitl14
    timm_name: str
    depth: int


VARIANTS = {384: Variant("vits14", "vit_small_patch14_dinov2", 12),
            768: Variant("vitb14", "vit_base_patch14_dinov2", 12),
            1024: Variant("vitl14", "vit_large_patch14_dinov2", 24)}


class DinoV2WeightsError(FileNotFoundError):
    """No usable DINOv2 weights file (missing, not a plain state dict, the wrong hash or not a ViT-S/B/L-14)."""


def _missing(where: str) -> str:
    return (f"{where}: put Meta's DINOv2 weights there (dinov2_vitl14_pretrain.pth, the model dgm-eval uses, or the "
            f"vits14/vitb14 one, from {WEIGHTS_URL.format(v='vitl14')}, downloaded on a machine with internet)")


def resolve_weights(cli: str | None = None, configured: str | None = None, cache_dir: str | Path = "data/cache") -> Path:
    """--dinov2-weights, else $GANFLOW_DINOV2_WEIGHTS, else params evaluate.dinov2_weights. "random" gives a seeded
    random-initialized ViT-S/14 file in cache_dir (written once)."""
    found = resolve_path(cli, configured, option="--dinov2-weights", env=ENV_WEIGHTS, key="evaluate.dinov2_weights",
                         random_path=Path(cache_dir) / RANDOM_FILE, write_random=write_random_weights,
                         missing=lambda where: DinoV2WeightsError(_missing(where)))
    if found is not None:
        return found
    raise DinoV2WeightsError(
        _missing("fd_dinov2 needs a DINOv2 weights file; nothing is downloaded here") +
        f"; pass --dinov2-weights PATH, set ${ENV_WEIGHTS}=PATH or evaluate.dinov2_weights in params.yaml "
        f"('{RANDOM}': a random-initialized ViT-S/14, a smoke run)")


def variant_of(state: dict) -> Variant:
    """Which ViT a Meta-layout state dict holds, from its shapes; a clear error for anything else."""
    if "register_tokens" in state:
        raise DinoV2WeightsError("DINOv2 with registers (dinov2_vit*14_reg4) is not supported: use the "
                                 "dinov2_vit{s,b,l}14_pretrain.pth files")
    if "cls_token" not in state or "pos_embed" not in state or "blocks.0.attn.qkv.weight" not in state:
        raise DinoV2WeightsError("not a DINOv2 ViT state dict in Meta's layout (cls_token, pos_embed, "
                                 "blocks.N.attn.qkv, ...): expected dinov2_vit{s,b,l}14_pretrain.pth")
    dim = int(state["cls_token"].shape[-1])
    if dim not in VARIANTS:
        raise DinoV2WeightsError(f"DINOv2 with width {dim} is not supported (ViT-g/14 needs SwiGLU): use ViT-S, B "
                                 f"or L/14 ({sorted(VARIANTS)})")
    v = VARIANTS[dim]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if depth != v.depth:
        raise DinoV2WeightsError(f"a width-{dim} DINOv2 has {v.depth} blocks, this file {depth}")
    return v


def meta_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The position embedding Meta's DinoVisionTransformer.interpolate_pos_encoding adds for a grid×grid input."""
    cls, patches = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    m, dim = int(round(patches.shape[1] ** 0.5)), patches.shape[-1]
    if m == grid:
        return pos_embed
    scale = (grid + POS_OFFSET) / m
    out = torch.nn.functional.interpolate(patches.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic",
                                          scale_factor=(scale, scale), antialias=False)
    assert out.shape[-2:] == (grid, grid)
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1).to(pos_embed.dtype)


def build_model(state: dict) -> torch.nn.Module:
    """timm's DINOv2 ViT for 224² inputs, holding `state` (Meta's layout)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    variant = variant_of(state)
    state = dict(state, pos_embed=meta_pos_embed(state["pos_embed"], INPUT_SIZE // PATCH))
    model = timm.create_model(variant.timm_name, pretrained=False, img_size=INPUT_SIZE, num_classes=0)
    try:
        model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)  # type: ignore[arg-type]  # a timm ViT
    except RuntimeError as e:  # missing/unexpected keys or shapes
        raise DinoV2WeightsError(f"not a DINOv2 {variant.name} state dict: {str(e).splitlines()[0]}") from None
    return model.eval().requires_grad_(False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW → float NCHW 224², as dgm-eval's DINOv2 transform (PIL bicubic, ToTensor, ImageNet normalize)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images N×3×H×W, got {images.dtype} {tuple(images.shape)}")
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    resized = np.stack([np.asarray(Image.fromarray(im).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BICUBIC))
                        for im in arr])
    x = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div_(255)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


class DinoV2Extractor(torch.nn.Module):
    """Images (uint8 NCHW, any size) → (CLS features [N, dim],): the call convention of tasks.evaluation.metrics."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        self.variant = variant_of(state)
        self.name = f"dinov2-{self.variant.name}"  # what caches are keyed by, beside the weights' sha256
        self.model = build_model(state)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        device = next(self.model.parameters()).device
        return (self.model(preprocess(images).to(device)).float(),)


def load_extractor(path: str | Path, sha256: str | None = None, device: str = "cpu") -> tuple[DinoV2Extractor, str]:
    """The extractor of `path` (read once, sha256-checked, weights_only) and the file's sha256."""
    state, digest = read_state_dict(path, sha256, what="DINOv2", error=DinoV2WeightsError)
    return DinoV2Extractor(state).to(device), digest


def random_state_dict(variant: str = "vits14", seed: int = 0) -> dict:
    """A state dict in Meta's layout (timm's DINOv2 keys + mask_token, 37×37 position embedding) with seeded random
    values that give non-degenerate features: for tests, benchmarks and offline smoke runs. The values come from one
    torch.Generator over the sorted keys, so a seed rebuilds the same tensors on any machine."""
    import timm

    v = next(x for x in VARIANTS.values() if x.name == variant)
    shapes = {k: t.shape for k, t in timm.create_model(v.timm_name, pretrained=False, num_classes=0,
                                                       img_size=518).state_dict().items()}
    shapes["mask_token"] = torch.Size([1, shapes["cls_token"][-1]])
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k in sorted(shapes):
        shape = shapes[k]
        r = torch.randn(shape, generator=g)
        if k.endswith(".gamma"):                        # layer scale: well away from Meta's 1e-5 init
            t = 0.5 + 0.25 * r
        elif "norm" in k and k.endswith(".weight"):
            t = 1 + 0.1 * r
        elif k.endswith(".bias"):
            t = 0.02 * r
        elif k in ("cls_token", "pos_embed", "mask_token"):
            t = 0.1 * r
        else:                                           # linear/conv weights: unit-variance outputs
            t = r / float(np.prod(shape[1:])) ** 0.5
        state[k] = t.contiguous()
    return state


def write_random_weights(path: str | Path, variant: str = "vits14", seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers each rename a whole file
    with open(tmp, "wb") as f:
        torch.save(random_state_dict(variant, seed), f)
    os.replace(tmp, path)
    return path
