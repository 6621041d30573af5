"""ADA: adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data"), in plain differentiable PyTorch.

Two parts, as in NVlabs/stylegan2-ada-pytorch (`training/augment.py` and the ADA block of
`training/training_loop.py`), whose behaviour this follows:

- `AugmentPipe`: an nn.Module that augments a batch NCHW in [-1, 1]. Each transform is applied to each
  image independently with probability `p` × its multiplier; `p` is a buffer, so it is saved with the
  module and can be set with `pipe.p.fill_(x)`. All transforms of a group are folded into one matrix per
  image (a 3×3 homogeneous 2D transform for the geometry, a 4×4 homogeneous color transform), so a
  batch costs one resampling and one color matmul whatever the number of transforms, with no Python loop
  over the batch. Gradients flow to the input images (G learns through the augmentation).
- `AdaController`: accumulates sign(D(real)) and, every `interval` steps, moves p by
  sign(r_t - target) × batch × interval / (ada_kimg × 1000), clamped to [0, 1].

Randomness comes from torch's global RNG (or the `generator` passed to `forward`), so restoring the RNG
state restores the augmentation exactly (exact resume).

Differences from the reference:
- Pure blits (x-flip, 90° rotations, integer translation) are executed exactly, by gathering pixels
  (reflect at the borders), for every image that drew no general geometric transform. The reference
  resamples them through its filtered path like any other transform: close to, not exactly, a pixel
  permutation (an x-flip through the asymmetric sym6 filter is off by up to ~3e-2).
- The random draws are the reference's, in its order and shapes: from the same torch RNG state both pipes
  draw the same augmentations (tests/test_training_parity.py replays the reference's stream through it).
- `resample="sym6"` (the default) resamples as the reference does: reflect-pad, 2× upsample with the sym6
  wavelet low-pass, bilinear sample, low-pass and 2× downsample, which suppresses aliasing when an image is
  shrunk or rotated; it matches the reference's output to ~1e-6 (tests/test_augment.py holds reference
  values). `resample="bilinear"` samples the original image directly with `F.grid_sample` (bilinear,
  reflection about the border pixels): about 15× cheaper on CPU, differs from the reference by ~1e-2 on
  smooth images and aliases more. Both are plain torch ops (no custom CUDA kernel, no gradfix).
- p is clamped to [0, 1]; the reference clamps at 0 only.
- No `debug_percentile` mode. The image-space filter ('f') needs images larger than 21 pixels, as there.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

# Low-pass filters of the wavelets the reference uses: sym6 for geometric resampling, sym2 for the
# image-space filter bank.
SYM2 = [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025]
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]


@dataclass(frozen=True)
class AugmentSettings:
    """Probability multipliers (0 = off, 1 = applied with probability p) and strengths, as the reference."""
    # Pixel blitting.
    xflip: float = 0.0             # x-flip
    rotate90: float = 0.0          # rotation by a multiple of 90°
    xint: float = 0.0              # integer translation
    xint_max: float = 0.125        # range of integer translation, relative to image size
    # General geometric transforms.
    scale: float = 0.0             # isotropic scaling
    rotate: float = 0.0            # arbitrary rotation (pre- and post-, P(pre or post) = p)
    aniso: float = 0.0             # anisotropic scaling
    xfrac: float = 0.0             # fractional translation
    scale_std: float = 0.2         # log2 std of isotropic scaling
    rotate_max: float = 1.0        # range of rotation, 1 = full circle
    aniso_std: float = 0.2         # log2 std of anisotropic scaling
    xfrac_std: float = 0.125       # std of fractional translation, relative to image size
    # Color transforms.
    brightness: float = 0.0        # additive brightness
    contrast: float = 0.0          # multiplicative contrast
    lumaflip: float = 0.0          # luma flip (Householder reflection along the gray axis)
    hue: float = 0.0               # hue rotation (about the gray axis)
    saturation: float = 0.0        # saturation
    brightness_std: float = 0.2    # std of brightness
    contrast_std: float = 0.5      # log2 std of contrast
    hue_max: float = 1.0           # range of hue rotation, 1 = full circle
    saturation_std: float = 1.0    # log2 std of saturation
    # Image-space filtering.
    imgfilter: float = 0.0         # per-band amplification
    imgfilter_bands: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # multipliers per band
    imgfilter_std: float = 1.0     # log2 std of band amplification
    # Image-space corruptions.
    noise: float = 0.0             # additive RGB noise
    cutout: float = 0.0            # cutout (a rectangle set to 0)
    noise_std: float = 0.1         # std of the noise's sigma
    cutout_size: float = 0.5       # side of the cutout rectangle, relative to image size


_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
# The reference's --augpipe presets ('bgc' is its default).
AUGPIPE_SPECS: dict[str, dict] = {
    "none": {},
    "blit": _BLIT,
    "geom": _GEOM,
    "color": _COLOR,
    "filter": dict(imgfilter=1),
    "noise": dict(noise=1),
    "cutout": dict(cutout=1),
    "bg": {**_BLIT, **_GEOM},
    "bgc": {**_BLIT, **_GEOM, **_COLOR},
    "bgcf": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1},
    "bgcfn": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1, "noise": 1},
    "bgcfnc": {**_BLIT, **_GEOM, **_COLOR, "imgfilter": 1, "noise": 1, "cutout": 1},
}


# --------------------------------------------------------------------------- batched matrices
# Each helper takes per-image parameters of shape [B] and returns [B, n, n] homogeneous matrices.

def _stack(rows: list[list], like: Tensor) -> Tensor:
    """[B, n, m] from a grid of scalars and [B] tensors."""
    elems = [e if isinstance(e, Tensor) else torch.full_like(like, float(e)) for row in rows for e in row]
    return torch.stack(elems, dim=-1).reshape(like.shape + (len(rows), len(rows[0])))


def translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    return _stack([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx)


def scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    return _stack([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx)


def rotate2d(theta: Tensor) -> Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _stack([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def translate3d(tx: Tensor, ty: Tensor, tz: Tensor) -> Tensor:
    return _stack([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]], tx)


def scale3d(sx: Tensor, sy: Tensor, sz: Tensor) -> Tensor:
    return _stack([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]], sx)


def rotate3d(axis: tuple[float, float, float], theta: Tensor) -> Tensor:
    """Rotation by theta [B] about a unit axis (Rodrigues), homogeneous 4×4. theta=0 gives exactly I."""
    vx, vy, vz = axis
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _stack([
        [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
        [0, 0, 0, 1]], theta)


# --------------------------------------------------------------------------- FIR resampling
# Channels are folded into the batch ([N*C, 1, H, W]): a one-channel convolution takes a fast path on CPU,
# where a depthwise (grouped) one or a transposed one takes a slow path.

def _upsample2x(x: Tensor, taps: Tensor) -> Tensor:
    """2× upsampling with an even-length low-pass, as the reference's upsample2d (zero-stuff, pad
    (k/2, k/2 - 1), convolve, gain 2 per axis), in polyphase form: one convolution with the 4 (row, column)
    phases of the separable filter, then pixel_shuffle interleaves them. No stuffed zeros are multiplied;
    on CPU this is a few times faster than zero-stuffing or a transposed convolution."""
    n, c, h, w = x.shape
    k = taps.numel()
    assert k % 4 == 0, "this polyphase split needs a multiple of 4 taps (sym6 has 12)"
    f = (taps * 2).to(x.dtype)
    zero = f.new_zeros(1)
    # Output 2m takes the odd taps over x[m - k/4 .. m + k/4 - 1], output 2m+1 the even taps over
    # x[m - k/4 + 1 .. m + k/4]: both are correlations with k/2 + 1 wide kernels over x padded by k/4.
    phases = torch.stack([torch.cat([f[1::2].flip(0), zero]), torch.cat([zero, f[0::2].flip(0)])])
    kernel = (phases[:, None, :, None] * phases[None, :, None, :]).reshape(4, 1, k // 2 + 1, k // 2 + 1)
    pad = k // 4
    x = F.pad(x.reshape(n * c, 1, h, w), [pad, pad] * 2)
    return F.pixel_shuffle(F.conv2d(x, kernel), 2).reshape(n, c, h * 2, w * 2)


def _downsample2x(x: Tensor, taps: Tensor, crop: int) -> Tensor:
    """The reference's downsample2d(flip_filter=True, padding=-crop): pad (k-1)//2 - crop before and
    (k-2)//2 - crop after (negative: crop), correlate with `taps`, keep every other sample."""
    n, c, h, w = x.shape
    k = taps.numel()
    p0, p1 = (k - 1) // 2 - crop, (k - 2) // 2 - crop
    x = x.reshape(n * c, 1, h, w)
    x = F.pad(x, [max(p0, 0), max(p1, 0)] * 2)
    x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
    f = taps.to(x.dtype)
    x = F.conv2d(x, f.reshape(1, 1, 1, k), stride=(1, 2))
    x = F.conv2d(x, f.reshape(1, 1, k, 1), stride=(2, 1))
    return x.reshape(n, c, x.shape[2], x.shape[3])


def _reflect_index(i: Tensor, n: int) -> Tensor:
    """Whole-pixel coordinates (integer-valued floats, exact below 2^24) reflected into [0, n) about the
    first and last pixel centres, as F.pad's 'reflect'."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def _imgfilter_bank() -> np.ndarray:
    """[4, 43] filters that split an image into 4 octave bands (the reference's bank, built from sym2)."""
    lo = np.asarray(SYM2)
    hi = lo * (-1.0) ** np.arange(lo.size)
    lo2 = np.convolve(lo, lo[::-1]) / 2
    hi2 = np.convolve(hi, hi[::-1]) / 2
    bank = np.eye(4, 1)
    for i in range(1, bank.shape[0]):
        stuffed = np.zeros((bank.shape[0], bank.shape[1] * 2 - 1))
        stuffed[:, ::2] = bank
        bank = np.stack([np.convolve(row, lo2) for row in stuffed])
        start = (bank.shape[1] - hi2.size) // 2
        bank[i, start:start + hi2.size] += hi2
    return bank


# --------------------------------------------------------------------------- the pipe

class AugmentPipe(nn.Module):
    """Differentiable ADA augmentation of NCHW images in [-1, 1] (1 or 3 channels).

    `AugmentPipe()` is the reference's default 'bgc' pipe; `AugmentPipe("blit")`, `AugmentPipe("none",
    xflip=1)` or `AugmentPipe(AugmentSettings(...))` choose others; keywords override the preset's
    fields. `p` starts at `p` (0 by default, as ADA starts) and is a buffer: set it with `pipe.p.fill_(x)`.
    """

    p: Tensor  # buffers (register_buffer): typed for mypy
    geom_taps: Tensor
    fbank: Tensor

    def __init__(self, spec: str | AugmentSettings = "bgc", *, p: float = 0.0, resample: str = "sym6",
                 **overrides):
        super().__init__()
        if isinstance(spec, AugmentSettings):
            settings = spec
        elif spec in AUGPIPE_SPECS:
            settings = AugmentSettings(**AUGPIPE_SPECS[spec])
        else:
            raise ValueError(f"unknown augment spec {spec!r}: expected one of {sorted(AUGPIPE_SPECS)}")
        if "imgfilter_bands" in overrides:
            overrides["imgfilter_bands"] = tuple(float(b) for b in overrides["imgfilter_bands"])
        self.settings = dataclasses.replace(settings, **overrides)
        if resample not in ("sym6", "bilinear"):
            raise ValueError(f"resample must be 'sym6' or 'bilinear', not {resample!r}")
        self.resample = resample
        self.register_buffer("p", torch.tensor(float(p)))
        taps = torch.tensor(SYM6, dtype=torch.float64)
        self.register_buffer("geom_taps", (taps / taps.sum()).float(), persistent=False)
        self.register_buffer("fbank", torch.tensor(_imgfilter_bank(), dtype=torch.float32), persistent=False)

    def extra_repr(self) -> str:
        on = [f.name for f in dataclasses.fields(self.settings)
              if not f.name.endswith(("_max", "_std", "_size", "_bands")) and getattr(self.settings, f.name)]
        return f"p={float(self.p):.4f}, resample={self.resample}, on={on}"

    # ---------------------------------------------------------------- random draws
    def _draws(self, batch: int, device, generator):
        rand = lambda *shape: torch.rand(*shape, device=device, generator=generator)  # noqa: E731
        randn = lambda *shape: torch.randn(*shape, device=device, generator=generator)  # noqa: E731
        return rand, randn

    def _happens(self, mult: float, rand, batch: int, shape=None) -> Tensor:
        """Boolean [batch] (or `shape`): which images get a transform of multiplier `mult`."""
        return rand(*(shape or (batch,))) < mult * self.p

    # ---------------------------------------------------------------- forward
    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment `images` [N, C, H, W]; draws from `generator` (on the images' device) or torch's global
        RNG. With p = 0 it returns `images` itself and draws nothing.

        The groups run in the reference's order, each drawing its numbers in a fixed order (so a seed gives
        the same augmentation every time): blits and general geometry fold into one matrix and one resampling,
        then color, the image-space filter, the corruptions."""
        if images.ndim != 4:
            raise ValueError(f"expected NCHW images, got shape {tuple(images.shape)}")
        if float(self.p) <= 0:
            return images
        batch, chans, height, width = images.shape
        rand, randn = self._draws(batch, images.device, generator)
        G_inv, blitted, quarter_turn = self._blit_matrix(batch, height, width, images.device, rand)
        G_inv, warped = self._geometric_matrix(G_inv, quarter_turn, height, width, rand, randn)
        images = self._execute_geometry(images, G_inv, blitted & ~warped, warped)
        C = self._color_matrix(batch, chans, images.device, rand, randn)
        if C is not None:
            images = self._execute_color(images, C)
        if self.settings.imgfilter > 0:
            images = self._execute_imgfilter(images, rand, randn)
        return self._corrupt(images, rand, randn)

    # ---------------------------------------------------------------- one method per group
    def _blit_matrix(self, batch: int, height: int, width: int, device, rand) -> tuple[Tensor, Tensor, Tensor]:
        """Pixel blitting (x-flip, 90° rotations, integer translation): (G_inv [batch, 3, 3], which images were
        blitted, which quarter turns must be resampled). G_inv maps output pixel coords (centred) to input coords."""
        s = self.settings
        zeros = torch.zeros(batch, device=device)
        ones = torch.ones(batch, device=device)
        G_inv = torch.eye(3, device=device).expand(batch, 3, 3)
        blitted = torch.zeros(batch, dtype=torch.bool, device=device)
        quarter_turn = torch.zeros(batch, dtype=torch.bool, device=device)  # needs resampling, see below
        if s.xflip > 0:
            i = torch.floor(rand(batch) * 2)
            i = torch.where(self._happens(s.xflip, rand, batch), i, zeros)
            G_inv = G_inv @ scale2d(1 - 2 * i, ones)
            blitted |= i != 0
        if s.rotate90 > 0:
            i = torch.floor(rand(batch) * 4)
            i = torch.where(self._happens(s.rotate90, rand, batch), i, zeros)
            # Exact matrices for multiples of 90° (cos/sin of k·π/2 are not exactly 0/±1 in floating point).
            c = torch.tensor([1.0, 0.0, -1.0, 0.0], device=device)[i.long()]
            sn = torch.tensor([0.0, 1.0, 0.0, -1.0], device=device)[i.long()]
            G_inv = G_inv @ _stack([[c, -sn, 0], [sn, c, 0], [0, 0, 1]], c)
            blitted |= i != 0
            if (height - width) % 2:  # a quarter turn of an odd × even image lands between pixel centres
                quarter_turn = i % 2 == 1
        if s.xint > 0:
            t = (rand(batch, 2) * 2 - 1) * s.xint_max
            t = torch.where(self._happens(s.xint, rand, batch, (batch, 1)), t, torch.zeros_like(t))
            tx, ty = torch.round(t[:, 0] * width), torch.round(t[:, 1] * height)
            G_inv = G_inv @ translate2d(-tx, -ty)
            blitted |= (tx != 0) | (ty != 0)
        return G_inv, blitted, quarter_turn

    def _geometric_matrix(self, G_inv: Tensor, resampled: Tensor, height: int, width: int, rand,
                          randn) -> tuple[Tensor, Tensor]:
        """General geometric transforms (scale, rotation, anisotropy, fractional translation) composed onto the
        blits' G_inv: (G_inv, which images must be resampled: `resampled` and those that drew one)."""
        s = self.settings
        batch = G_inv.shape[0]
        zeros = torch.zeros(batch, device=G_inv.device)
        ones = torch.ones(batch, device=G_inv.device)
        warped = resampled.clone()
        if s.scale > 0:
            v = torch.exp2(randn(batch) * s.scale_std)
            on = self._happens(s.scale, rand, batch)
            G_inv = G_inv @ scale2d(1 / torch.where(on, v, ones), 1 / torch.where(on, v, ones))
            warped |= on
        p_rot = 1 - torch.sqrt((1 - s.rotate * self.p).clamp(0, 1))  # P(pre or post) = rotate × p
        if s.rotate > 0:
            theta = (rand(batch) * 2 - 1) * math.pi * s.rotate_max
            on = rand(batch) < p_rot
            G_inv = G_inv @ rotate2d(torch.where(on, theta, zeros))  # inverse of rotating by -theta
            warped |= on
        if s.aniso > 0:
            v = torch.exp2(randn(batch) * s.aniso_std)
            on = self._happens(s.aniso, rand, batch)
            v = torch.where(on, v, ones)
            G_inv = G_inv @ scale2d(1 / v, v)
            warped |= on
        if s.rotate > 0:
            theta = (rand(batch) * 2 - 1) * math.pi * s.rotate_max
            on = rand(batch) < p_rot
            G_inv = G_inv @ rotate2d(torch.where(on, theta, zeros))
            warped |= on
        if s.xfrac > 0:
            t = randn(batch, 2) * s.xfrac_std
            on = self._happens(s.xfrac, rand, batch)
            t = torch.where(on[:, None], t, torch.zeros_like(t))
            G_inv = G_inv @ translate2d(-t[:, 0] * width, -t[:, 1] * height)
            warped |= on
        return G_inv, warped

    def _color_matrix(self, batch: int, chans: int, device, rand, randn) -> Tensor | None:
        """Color transforms: C [batch, 4, 4] maps homogeneous RGB in to out; None when none is on."""
        s = self.settings
        zeros = torch.zeros(batch, device=device)
        ones = torch.ones(batch, device=device)
        C = torch.eye(4, device=device).expand(batch, 4, 4)
        colored = False
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)
        vvT = torch.outer(luma, luma)
        eye4 = torch.eye(4, device=device)
        if s.brightness > 0:
            b = randn(batch) * s.brightness_std
            b = torch.where(self._happens(s.brightness, rand, batch), b, zeros)
            C = translate3d(b, b, b) @ C
            colored = True
        if s.contrast > 0:
            c = torch.exp2(randn(batch) * s.contrast_std)
            c = torch.where(self._happens(s.contrast, rand, batch), c, ones)
            C = scale3d(c, c, c) @ C
            colored = True
        if s.lumaflip > 0:
            i = torch.floor(rand(batch) * 2)
            i = torch.where(self._happens(s.lumaflip, rand, batch), i, zeros)
            C = (eye4 - 2 * vvT * i[:, None, None]) @ C  # Householder reflection along the gray axis
            colored = True
        if s.hue > 0 and chans > 1:
            theta = (rand(batch) * 2 - 1) * math.pi * s.hue_max
            theta = torch.where(self._happens(s.hue, rand, batch), theta, zeros)
            C = rotate3d((1 / math.sqrt(3),) * 3, theta) @ C
            colored = True
        if s.saturation > 0 and chans > 1:
            v = torch.exp2(randn(batch) * s.saturation_std)
            v = torch.where(self._happens(s.saturation, rand, batch), v, ones)
            # vvT + (I - vvT)·v, written so that v = 1 gives exactly I.
            C = (eye4 + (eye4 - vvT) * (v - 1)[:, None, None]) @ C
            colored = True
        return C if colored else None

    def _corrupt(self, images: Tensor, rand, randn) -> Tensor:
        """Image-space corruptions: additive RGB noise, then cutout (a rectangle set to 0)."""
        s = self.settings
        batch, chans, height, width = images.shape
        device = images.device
        if s.noise > 0:
            sigma = randn(batch, 1, 1, 1).abs() * s.noise_std
            sigma = torch.where(self._happens(s.noise, rand, batch, (batch, 1, 1, 1)), sigma, torch.zeros_like(sigma))
            images = images + randn(batch, chans, height, width).to(images.dtype) * sigma.to(images.dtype)
        if s.cutout > 0:
            size = torch.full((batch, 2, 1, 1, 1), s.cutout_size, device=device)
            size = torch.where(self._happens(s.cutout, rand, batch, (batch, 1, 1, 1, 1)), size, torch.zeros_like(size))
            center = rand(batch, 2, 1, 1, 1)
            cx = torch.arange(width, device=device).reshape(1, 1, 1, -1)
            cy = torch.arange(height, device=device).reshape(1, 1, -1, 1)
            keep_x = ((cx + 0.5) / width - center[:, 0]).abs() >= size[:, 0] / 2
            keep_y = ((cy + 0.5) / height - center[:, 1]).abs() >= size[:, 1] / 2
            images = images * (keep_x | keep_y).to(images.dtype)
        return images

    # ---------------------------------------------------------------- execution
    def _execute_geometry(self, images: Tensor, G_inv: Tensor, blit_only: Tensor, warped: Tensor) -> Tensor:
        """Blit-only images by an exact pixel gather, warped ones by resampling, the rest untouched."""
        blit_idx = blit_only.nonzero().squeeze(1)
        warp_idx = warped.nonzero().squeeze(1)
        index, parts = [], []
        if blit_idx.numel():
            index.append(blit_idx)
            parts.append(_blit(images[blit_idx], G_inv[blit_idx]))
        if warp_idx.numel():
            sub, G = images[warp_idx], G_inv[warp_idx]
            index.append(warp_idx)
            parts.append(_warp_bilinear(sub, G) if self.resample == "bilinear" else _warp_sym6(sub, G, self.geom_taps))
        if not parts:
            return images
        if sum(len(i) for i in index) == len(images):  # every image changed: no untouched ones to keep
            order = torch.cat(index).argsort()
            return torch.cat(parts)[order] if len(parts) > 1 else parts[0][order]
        return images.index_put((torch.cat(index),), torch.cat(parts) if len(parts) > 1 else parts[0])

    @staticmethod
    def _execute_color(images: Tensor, C: Tensor) -> Tensor:
        batch, chans, height, width = images.shape
        x = images.reshape(batch, chans, height * width)
        C = C.to(images.dtype)
        if chans == 3:
            x = C[:, :3, :3] @ x + C[:, :3, 3:]
        elif chans == 1:
            C = C[:, :3, :].mean(dim=1, keepdim=True)
            x = x * C[:, :, :3].sum(dim=2, keepdim=True) + C[:, :, 3:]
        else:
            raise ValueError(f"color augmentation needs RGB or L images, got {chans} channels")
        return x.reshape(batch, chans, height, width)

    def _execute_imgfilter(self, images: Tensor, rand, randn) -> Tensor:
        s = self.settings
        batch, chans, height, width = images.shape
        bands = self.fbank.shape[0]
        if len(s.imgfilter_bands) != bands:
            raise ValueError(f"imgfilter_bands needs {bands} values")
        expected_power = torch.tensor([10.0, 1.0, 1.0, 1.0], device=images.device) / 13  # 1/f spectrum
        gain = torch.ones(batch, bands, device=images.device)
        for band, strength in enumerate(s.imgfilter_bands):  # 4 bands, not the batch
            t_i = torch.exp2(randn(batch) * s.imgfilter_std)
            t_i = torch.where(self._happens(s.imgfilter * strength, rand, batch), t_i, torch.ones_like(t_i))
            t = torch.ones(batch, bands, device=images.device)
            t[:, band] = t_i
            gain = gain * t / (expected_power * t.square()).sum(dim=-1, keepdim=True).sqrt()
        taps = (gain @ self.fbank.to(gain.dtype)).to(images.dtype)  # [batch, taps]
        k = taps[:, None, :].expand(batch, chans, -1).reshape(batch * chans, 1, -1)
        pad = self.fbank.shape[1] // 2
        x = images.reshape(1, batch * chans, height, width)
        x = F.pad(x, [pad, pad, pad, pad], mode="reflect")
        x = F.conv2d(x, k[:, :, None, :], groups=batch * chans)
        x = F.conv2d(x, k[:, :, :, None], groups=batch * chans)
        return x.reshape(batch, chans, height, width)


def _pixel_grid(height: int, width: int, device) -> Tensor:
    """[3, H*W] homogeneous pixel-centre coordinates, centred on the image."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2,
                            torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2,
                            indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(height * width, device=device)])


def _blit(images: Tensor, G_inv: Tensor) -> Tensor:
    """Integer transforms as an exact gather; out-of-image sources reflect about the border pixels."""
    batch, chans, height, width = images.shape
    src = G_inv[:, :2] @ _pixel_grid(height, width, images.device)  # [b, 2, H*W], centred
    sx = _reflect_index(torch.round(src[:, 0] + (width - 1) / 2), width)
    sy = _reflect_index(torch.round(src[:, 1] + (height - 1) / 2), height)
    index = (sy * width + sx).long()[:, None, :].expand(batch, chans, -1)
    return images.reshape(batch, chans, height * width).gather(2, index).reshape(images.shape)


def _warp_bilinear(images: Tensor, G_inv: Tensor) -> Tensor:
    """Bilinear resampling of the original image, reflection about the border pixel centres."""
    batch, chans, height, width = images.shape
    # Normalised coords with align_corners=True: ±1 at the centres of the border pixels.
    norm = torch.diag(torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1), 1.0], device=images.device))
    theta = norm @ G_inv @ torch.linalg.inv(norm)
    grid = F.affine_grid(theta[:, :2, :], [batch, chans, height, width], align_corners=True)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="reflection",
                         align_corners=True)


def _warp_sym6(images: Tensor, G_inv: Tensor, taps: Tensor) -> Tensor:
    """The reference's resampling: reflect-pad enough to cover the transformed image, upsample 2× with
    the sym6 low-pass, sample bilinearly, low-pass and downsample 2×."""
    batch, chans, height, width = images.shape
    device = images.device
    cx, cy = (width - 1) / 2, (height - 1) / 2
    hz_pad = taps.numel() // 4

    # Padding: how far outside the image the transformed corners reach (+ the filter's support).
    corners = torch.tensor([[-cx, -cy, 1.0], [cx, -cy, 1.0], [cx, cy, 1.0], [-cx, cy, 1.0]], device=device)
    reach = (G_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)  # [xy, batch*4]
    margin = torch.cat([-reach, reach]).amax(dim=1)  # x0, y0, x1, y1
    margin = margin + torch.tensor([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2, device=device)
    margin = margin.clamp(min=0).minimum(torch.tensor([width - 1, height - 1] * 2, device=device, dtype=margin.dtype))
    mx0, my0, mx1, my1 = (int(m) for m in margin.ceil().tolist())
    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    one = torch.ones(batch, device=device)
    G = translate2d(one * (mx0 - mx1) / 2, one * (my0 - my1) / 2) @ G_inv

    # 2× upsample; move the transform into upsampled pixel coordinates.
    images = _upsample2x(images, taps.to(device))
    G = scale2d(one * 2, one * 2) @ G @ scale2d(one / 2, one / 2)
    G = translate2d(-0.5 * one, -0.5 * one) @ G @ translate2d(0.5 * one, 0.5 * one)

    # Sample an output (with the filter's margin) at 2× resolution; normalised coords, align_corners=False.
    out_h, out_w = (height + hz_pad * 2) * 2, (width + hz_pad * 2) * 2
    G = scale2d(one * 2 / images.shape[3], one * 2 / images.shape[2]) @ G @ scale2d(one * out_w / 2, one * out_h / 2)
    grid = F.affine_grid(G[:, :2, :], [batch, chans, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                           align_corners=False)

    # Low-pass, 2× downsample, crop the margin.
    return _downsample2x(images, taps.to(device), crop=hz_pad * 2)


# --------------------------------------------------------------------------- the p controller

class AdaController:
    """Adjusts the augmentation probability p from how much D overfits (ADA's r_t heuristic).

    Call `accumulate(real_logits)` after each D step on reals and `update(p)` every `interval` steps:
    r_t = E[sign(D(real))] over the images accumulated since the last update, and
    p ← clamp(p + sign(r_t - target) × batch × interval / (ada_kimg × 1000), 0, 1),
    so p can go from 0 to 1 in `ada_kimg` thousand images. Under torch.distributed the sums are
    all-reduced in `update` (every process must call it). `p` and `r_t` are attributes for logging;
    `state_dict()` holds plain Python numbers (loadable with torch.load(weights_only=True)).
    """

    def __init__(self, target: float = 0.6, interval: int = 4, ada_kimg: float = 500.0, batch: int = 32,
                 p: float = 0.0):
        if not 0 <= target <= 1:
            raise ValueError(f"ADA target must be in [0, 1], got {target}")
        if interval < 1 or batch < 1 or ada_kimg <= 0:
            raise ValueError("interval, batch and ada_kimg must be positive")
        self.target = float(target)      # wanted E[sign(D(real))]; the reference uses 0.6
        self.interval = int(interval)    # steps (minibatches) between adjustments; the reference uses 4
        self.ada_kimg = float(ada_kimg)  # p can go 0 → 1 in this many kimg; the reference uses 500
        self.batch = int(batch)          # images per step (all processes together)
        self.p = float(p)                # current augmentation probability
        self.r_t: float | None = None    # overfitting heuristic at the last update
        self.steps = 0                   # accumulate() calls since the last update
        self._sum: Tensor | float = 0.0  # sum of sign(D(real)) since the last update
        self._count: Tensor | float = 0.0

    @property
    def step_size(self) -> float:
        """How far one update moves p."""
        return self.batch * self.interval / (self.ada_kimg * 1000)

    @property
    def due(self) -> bool:
        """True once `interval` steps have been accumulated since the last update."""
        return self.steps >= self.interval

    @torch.no_grad()
    def accumulate(self, real_logits: Tensor) -> None:
        """Add one step's D(real) logits (any shape). Stays on the logits' device (no sync)."""
        logits = real_logits.detach().to(_acc_dtype(real_logits.device))
        signs = torch.where(torch.isnan(logits), logits, torch.sign(logits))  # NaN shows up in r_t
        self._sum = self._sum + signs.sum()
        self._count = self._count + signs.numel()
        self.steps += 1

    def update(self, p: float | None = None) -> float:
        """Adjust p (from `p` if given, else from self.p) and reset the statistics; returns the new p.

        With no statistics, or non-finite ones (NaN logits), p is left as it is."""
        if p is not None:
            self.p = float(p)
        total, count = self._reduce()
        self._sum, self._count, self.steps = 0.0, 0.0, 0
        if count <= 0:
            return self.p
        self.r_t = total / count
        if math.isfinite(self.r_t):
            adjust = float(np.sign(self.r_t - self.target)) * self.step_size
            self.p = min(max(self.p + adjust, 0.0), 1.0)
        return self.p

    def _reduce(self) -> tuple[float, float]:
        stats = torch.stack([torch.as_tensor(self._sum, dtype=torch.float64).cpu(),
                             torch.as_tensor(self._count, dtype=torch.float64).cpu()])
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            device = self._sum.device if isinstance(self._sum, Tensor) else torch.device("cpu")
            if dist.get_backend() == "nccl" and device.type != "cuda":
                device = torch.device("cuda", torch.cuda.current_device())
            stats = stats.to(device=device, dtype=_acc_dtype(device))
            dist.all_reduce(stats)
        total, count = (float(v) for v in stats.cpu())
        return total, count

    def state_dict(self) -> dict:
        total = float(self._sum) if isinstance(self._sum, Tensor) else self._sum
        count = float(self._count) if isinstance(self._count, Tensor) else self._count
        return {"target": self.target, "interval": self.interval, "ada_kimg": self.ada_kimg,
                "batch": self.batch, "p": self.p, "r_t": self.r_t, "steps": self.steps,
                "sign_sum": total, "sign_count": count}

    def load_state_dict(self, state: dict) -> None:
        self.target, self.interval = float(state["target"]), int(state["interval"])
        self.ada_kimg, self.batch = float(state["ada_kimg"]), int(state["batch"])
        self.p = float(state["p"])
        self.r_t = None if state["r_t"] is None else float(state["r_t"])
        self.steps = int(state["steps"])
        self._sum, self._count = float(state["sign_sum"]), float(state["sign_count"])


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64
