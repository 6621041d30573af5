"""Progressive GAN (Karras et al. 2018, "Progressive Growing of GANs for Improved Quality, Stability, and
Variation"): the networks of the paper's Table 2 in plain PyTorch, grown from 4x4 to the full resolution.

One small module per concept: EqualLinear and EqualConv2d (equalized learning rate), PixelNorm,
MinibatchStd, GeneratorInput (the 4x4 head of G), GeneratorBlock, ToRGB, FromRGB, DiscriminatorBlock,
DiscriminatorHead (the 4x4 end of D), Generator, Discriminator; GrowthSchedule says which stage and fade-in
alpha a number of training images means, and fade_reals prepares real images for that stage.

Stage s works at resolution 4 * 2**s (stage 0 = 4x4). While stage s fades in (alpha from 0 to 1), G blends
the nearest-upsampled image of stage s-1's ToRGB with the new block's ToRGB, and D blends the new
block's features with stage s-1's FromRGB of the 2x-downsampled input. Every layer stays trainable.

The layout follows the reference (tkarras/progressive_growing_of_gans, networks.py `G_paper`/`D_paper`):
feature maps min(channel_base / 2**(log2(res) - 1), channel_max), the latent normalized, G's 4x4 dense
layer with He gain sqrt(2)/4, ToRGB with gain 1, and (fused_scale, the reference's default) an upsampling
3x3 conv run as one 4x4 stride-2 transposed conv and a conv + 2x average pool as one 4x4 stride-2 conv:
the same functions as the paper's separate upsample/conv and conv/pool layers, with under half the FLOPs
(used from 16x16 up, where that pays). No Python loop runs over the batch; channels_last is an option.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from models.ops import memory_format

Tensor = torch.Tensor
SQRT2 = math.sqrt(2)
LRELU_SLOPE = 0.2


def stage_resolution(stage: int) -> int:
    """Image size at a growth stage: 4 * 2**stage (stage 0 = 4x4)."""
    if stage < 0:
        raise ValueError(f"stage must be >= 0, not {stage}")
    return 4 * 2 ** stage


def resolution_stage(resolution: int) -> int:
    """The stage whose images have this size (inverse of stage_resolution)."""
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, not {resolution}")
    return int(math.log2(resolution)) - 2


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class PGGANConfig:
    """Architecture of a PGGAN generator/discriminator pair (the reference's G_paper/D_paper arguments)."""

    resolution: int = 1024                  # final image size, a power of two >= 4
    channels: int = 3                       # image channels (3 = RGB)
    z_dim: int = 512                        # latent size (the reference: min(channel_base, channel_max))
    channel_base: int = 8192                # feature maps at res r: min(channel_base // (r // 2), channel_max)
    channel_max: int = 512
    mbstd_group: int = 4                    # minibatch-std group size (clamped to the batch); < 2 = no layer
    normalize_latents: bool = True          # pixel-normalize z before the first layer
    pixel_norm: bool = True                 # pixelwise feature normalization after every conv of G
    eps: float = 1e-8                       # pixel-norm and minibatch-std epsilon
    fused_scale: bool = True                # resampling convs (from 16x16 up) as one strided 4x4 conv
    channels_last: bool = False             # run convolutions on channels_last activations

    def __post_init__(self):
        resolution_stage(self.resolution)  # validates
        if self.channels_at(self.resolution) < 1:
            raise ValueError(f"channel_base {self.channel_base} leaves no feature maps at {self.resolution}")

    @property
    def num_stages(self) -> int:
        """Growth stages from 4x4 to the final resolution (9 for 1024)."""
        return resolution_stage(self.resolution) + 1

    @property
    def max_stage(self) -> int:
        return self.num_stages - 1

    def stage_resolution(self, stage: int) -> int:
        if not 0 <= stage <= self.max_stage:
            raise ValueError(f"stage must be in 0..{self.max_stage}, not {stage}")
        return stage_resolution(stage)

    def channels_at(self, res: int) -> int:
        """Feature maps of the layers working at resolution `res` (the reference's nf(log2(res) - 1))."""
        return min(self.channel_base // (res // 2), self.channel_max)

    def to_dict(self) -> dict:
        """Plain python values (checkpoint-friendly: loads with torch.load(weights_only=True))."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PGGANConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class PGGANTrainDefaults:
    """Training hyperparameters of the paper (section 4 and appendix A.1)."""

    minibatch: int = 16                     # images per step (the paper: 16 up to 128x128, see paper_minibatch)
    lr: float = 0.001                       # Adam learning rate, G and D
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas
    loss: str = "wgan"                      # WGAN-GP
    gp_gamma: float = 10.0                  # gradient penalty weight (lambda)
    drift: float = 0.001                    # drift penalty epsilon on D(reals)^2
    ema_beta: float = 0.999                 # G_ema decay per step

    def ema_kimg(self, minibatch: int | None = None) -> float:
        """ema_beta as a half-life in kimg (the trainer's unit): beta = 0.5 ** (minibatch / (1000 * kimg))."""
        return (minibatch or self.minibatch) * math.log(0.5) / math.log(self.ema_beta) / 1000


def paper_minibatch(resolution: int) -> int:
    """The paper's minibatch per resolution: 16 up to 128x128, then 14, 6, 3 (GPU memory, not quality)."""
    return {256: 14, 512: 6, 1024: 3}.get(resolution, 16 if resolution <= 128 else 3)


# The paper's networks ('paper': Table 2, truncated at the resolution) and a 4x narrower one for CPU runs.
_PRESETS: dict[str, dict] = {
    "paper": dict(channel_base=8192, channel_max=512, z_dim=512),
    "small": dict(channel_base=2048, channel_max=128, z_dim=128),
}
PRESETS = tuple(_PRESETS)


def preset(resolution: int, kind: str = "paper", channels: int = 3) -> tuple[PGGANConfig, PGGANTrainDefaults]:
    """Architecture and training defaults. 'paper' at 1024 is the CelebA-HQ network of the paper's Table 2."""
    if kind not in _PRESETS:
        raise ValueError(f"unknown preset {kind!r}; choose from {', '.join(PRESETS)}")
    return PGGANConfig(resolution=resolution, channels=channels, **_PRESETS[kind]), PGGANTrainDefaults()


# --------------------------------------------------------------------------- layers


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate: weights stored N(0, 1), scaled at run time by
    He's constant gain / sqrt(fan_in), so Adam's step size is the same for every layer."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, gain: float = SQRT2,
                 activation: str = "linear"):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]))
        self.bias = nn.Parameter(torch.zeros([out_features])) if bias else None
        self.fan_in, self.gain = in_features, gain
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.scale, self.bias)
        return F.leaky_relu(x, LRELU_SLOPE, inplace=True) if self.activation == "lrelu" else x


def _shift_sum(w: Tensor) -> Tensor:
    """[O, I, k, k] -> [O, I, k+1, k+1]: the sum of w placed at the four corners (one pixel apart).
    Done as two separable pad-and-add passes: their backward passes are slices, not copies."""
    w = F.pad(w, [0, 0, 0, 1]) + F.pad(w, [0, 0, 1, 0])
    return F.pad(w, [0, 1, 0, 0]) + F.pad(w, [1, 0, 0, 0])


# Below this (output or input) size the fused kernel's preparation (a few passes over the weights per
# step) costs more than the convolution FLOPs it saves, so those layers resample separately.
FUSED_MIN_RES = 16


class EqualConv2d(nn.Module):
    """Convolution ('same' padding) with equalized learning rate, bias, optional leaky ReLU, and optional 2x
    resampling: 'up' = nearest upsampling then the conv, 'down' = the conv then 2x2 average pooling.

    With fused=True (and the larger of its two sizes >= FUSED_MIN_RES) the resampling conv runs as one
    stride-2 conv (transposed for 'up') with the equivalent (k+1)x(k+1) kernel built from the same
    weight: the same function with 16/36 of the multiply-adds.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 gain: float = SQRT2, activation: str = "linear", resample: str = "none", fused: bool = True):
        super().__init__()
        if resample not in ("none", "up", "down"):
            raise ValueError(f"resample must be 'none', 'up' or 'down', not {resample!r}")
        if kernel_size % 2 != 1:
            raise ValueError("kernel_size must be odd")
        self.activation, self.resample, self.fused = activation, resample, fused
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.fan_in, self.gain = in_channels * kernel_size ** 2, gain
        self.scale = gain / math.sqrt(self.fan_in)

    def forward(self, x: Tensor) -> Tensor:
        b, p = self.bias, self.padding
        if self.resample == "none":
            x = F.conv2d(x, self.weight * self.scale, b, padding=p)
        elif self.resample == "up":
            if self._fuse(2 * x.shape[-1]):
                # Nearest 2x upsampling then conv: out[o] = sum_k w[k] x[(o + k - p) // 2], which is a
                # stride-2 transposed conv whose kernel is the shift-sum of the flipped w.
                w = _shift_sum(self.weight * self.scale).flip([2, 3]).transpose(0, 1)
                x = F.conv_transpose2d(x, w, b, stride=2, padding=p)
            else:
                x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), self.weight * self.scale, b, padding=p)
        elif self._fuse(x.shape[-1]):
            # Conv then 2x2 average pooling: out[i] = sum_k (w[k] + w[k-1]) / 4 x[2i + k - p], a stride-2 conv.
            x = F.conv2d(x, _shift_sum(self.weight * (self.scale / 4)), b, stride=2, padding=p)
        else:
            x = F.avg_pool2d(F.conv2d(x, self.weight * self.scale, b, padding=p), 2)
        return F.leaky_relu(x, LRELU_SLOPE, inplace=True) if self.activation == "lrelu" else x

    def _fuse(self, high_res: int) -> bool:
        return self.fused and high_res >= FUSED_MIN_RES


class PixelNorm(nn.Module):
    """Scales each pixel's feature vector to unit mean square: x / sqrt(mean_c(x^2) + eps)."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # The mean square in fp32: fp16 squares of activations above 256 overflow.
        return x * torch.rsqrt(x.float().square().mean(dim=1, keepdim=True) + self.eps).to(x.dtype)


class MinibatchStd(nn.Module):
    """Appends one feature map: the standard deviation of each feature over groups of `group_size` samples,
    averaged over features and pixels (the reference's grouping: sample n is in group n % (N // G))."""

    def __init__(self, group_size: int = 4, eps: float = 1e-8):
        super().__init__()
        self.group_size, self.eps = group_size, eps

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"batch size {n} is not a multiple of the minibatch-std group size {g}")
        y = x.float().reshape(g, -1, c, h, w)             # [G, M, C, H, W]
        y = y - y.mean(dim=0)                             # deviation from the group mean
        y = (y.square().mean(dim=0) + self.eps).sqrt()    # std over the group  [M, C, H, W]
        y = y.mean(dim=[1, 2, 3]).to(x.dtype)             # one number per group  [M]
        y = y.reshape(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
        return torch.cat([x, y.contiguous(memory_format=memory_format(_is_channels_last(x)))], dim=1)


def _is_channels_last(x: Tensor) -> bool:
    return x.ndim == 4 and x.shape[1] > 1 and x.stride(1) == 1


def _norm(cfg: PGGANConfig) -> nn.Module:
    return PixelNorm(cfg.eps) if cfg.pixel_norm else nn.Identity()


# --------------------------------------------------------------------------- generator


class GeneratorInput(nn.Module):
    """Stage 0 of G: (pixel-normalized) z -> 4x4 features. The paper's 'Conv 4x4' on the 1x1 latent is a
    dense layer to C*16 with per-channel bias (He gain sqrt(2)/4, as the reference), then a 3x3 conv;
    each followed by leaky ReLU and pixel norm."""

    def __init__(self, cfg: PGGANConfig):
        super().__init__()
        ch = cfg.channels_at(4)
        self.channels, self.channels_last = ch, cfg.channels_last
        self.latent_norm = PixelNorm(cfg.eps) if cfg.normalize_latents else nn.Identity()
        self.dense = EqualLinear(cfg.z_dim, ch * 16, bias=False, gain=SQRT2 / 4)
        self.bias = nn.Parameter(torch.zeros([ch]))
        self.norm0 = _norm(cfg)
        self.conv = EqualConv2d(ch, ch, 3, activation="lrelu")
        self.norm1 = _norm(cfg)

    def forward(self, z: Tensor) -> Tensor:
        x = self.dense(self.latent_norm(z)).reshape(-1, self.channels, 4, 4)
        x = F.leaky_relu(x + self.bias.reshape(1, -1, 1, 1), LRELU_SLOPE, inplace=True)
        x = self.norm0(x).contiguous(memory_format=memory_format(self.channels_last))
        return self.norm1(self.conv(x))


class GeneratorBlock(nn.Module):
    """Doubles the resolution: nearest 2x upsampling, two 3x3 convs, each with leaky ReLU and pixel norm."""

    def __init__(self, in_channels: int, out_channels: int, cfg: PGGANConfig):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, out_channels, 3, activation="lrelu", resample="up",
                                 fused=cfg.fused_scale)
        self.norm0 = _norm(cfg)
        self.conv1 = EqualConv2d(out_channels, out_channels, 3, activation="lrelu")
        self.norm1 = _norm(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm1(self.conv1(self.norm0(self.conv0(x))))


class ToRGB(nn.Module):
    """Features -> image: a linear 1x1 conv (gain 1, as the reference) with bias; no tanh."""

    def __init__(self, in_channels: int, img_channels: int):
        super().__init__()
        self.conv = EqualConv2d(in_channels, img_channels, 1, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Generator(nn.Module):
    """z [N, z_dim] -> images [N, C, r, r] at r = 4 * 2**stage, about [-1, 1] once trained.

    `G(z, stage, alpha)`: during a fade-in (alpha < 1) the output is
    lerp(upsample(ToRGB_{stage-1}(x)), ToRGB_stage(block_stage(x)), alpha). Defaults: the final stage, alpha 1.
    """

    def __init__(self, cfg: PGGANConfig):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.resolution, self.img_channels = cfg.z_dim, cfg.resolution, cfg.channels
        self.num_stages, self.max_stage = cfg.num_stages, cfg.max_stage
        blocks: list[nn.Module] = [GeneratorInput(cfg)]
        for s in range(1, cfg.num_stages):
            res = stage_resolution(s)
            blocks.append(GeneratorBlock(cfg.channels_at(res // 2), cfg.channels_at(res), cfg))
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.ModuleList(ToRGB(cfg.channels_at(stage_resolution(s)), cfg.channels)
                                    for s in range(cfg.num_stages))

    def stage_resolution(self, stage: int) -> int:
        return self.cfg.stage_resolution(stage)

    def forward(self, z: Tensor, stage: int | None = None, alpha: float = 1.0) -> Tensor:
        stage = self.max_stage if stage is None else stage
        self.cfg.stage_resolution(stage)  # validates
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, {self.z_dim}], not {list(z.shape)}")
        alpha = min(max(float(alpha), 0.0), 1.0)
        x = self.blocks[0](z)
        for s in range(1, stage):
            x = self.blocks[s](x)
        if stage == 0:
            return self.to_rgb[0](x).contiguous()
        img = self.to_rgb[stage](self.blocks[stage](x))
        if alpha < 1.0:
            prev = F.interpolate(self.to_rgb[stage - 1](x), scale_factor=2, mode="nearest")
            img = torch.lerp(prev, img, alpha)
        return img.contiguous()


# --------------------------------------------------------------------------- discriminator


class FromRGB(nn.Module):
    """Image -> features: a 1x1 conv with bias and leaky ReLU."""

    def __init__(self, img_channels: int, out_channels: int):
        super().__init__()
        self.conv = EqualConv2d(img_channels, out_channels, 1, activation="lrelu")

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class DiscriminatorBlock(nn.Module):
    """Halves the resolution: a 3x3 conv, a 3x3 conv to the next stage's width, 2x2 average pooling;
    leaky ReLU after each conv (no pixel norm in D)."""

    def __init__(self, in_channels: int, out_channels: int, cfg: PGGANConfig):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation="lrelu")
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, activation="lrelu", resample="down",
                                 fused=cfg.fused_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1(self.conv0(x))


class DiscriminatorHead(nn.Module):
    """Stage 0 of D (4x4): minibatch std, 3x3 conv, the paper's 'Conv 4x4' (a dense layer on the 4x4
    features), and a linear output (gain 1) giving one score per image."""

    def __init__(self, cfg: PGGANConfig):
        super().__init__()
        ch = cfg.channels_at(4)
        self.mbstd = MinibatchStd(cfg.mbstd_group, cfg.eps) if cfg.mbstd_group > 1 else None
        self.conv = EqualConv2d(ch + (1 if self.mbstd is not None else 0), ch, 3, activation="lrelu")
        self.dense = EqualLinear(ch * 16, min(cfg.channel_base, cfg.channel_max), activation="lrelu")
        self.out = EqualLinear(min(cfg.channel_base, cfg.channel_max), 1, gain=1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)
        return self.out(self.dense(self.conv(x).flatten(1)))


class Discriminator(nn.Module):
    """images [N, C, r, r] -> scores [N, 1] (real > fake), r = 4 * 2**stage.

    `D(img, stage, alpha)`: during a fade-in the new block's features are lerped with FromRGB_{stage-1}
    of the 2x average-pooled image, by alpha. The stage defaults to the one of the image's size.
    """

    def __init__(self, cfg: PGGANConfig):
        super().__init__()
        self.cfg = cfg
        self.resolution, self.img_channels = cfg.resolution, cfg.channels
        self.num_stages, self.max_stage = cfg.num_stages, cfg.max_stage
        blocks: list[nn.Module] = [DiscriminatorHead(cfg)]
        for s in range(1, cfg.num_stages):
            res = stage_resolution(s)
            blocks.append(DiscriminatorBlock(cfg.channels_at(res), cfg.channels_at(res // 2), cfg))
        self.blocks = nn.ModuleList(blocks)
        self.from_rgb = nn.ModuleList(FromRGB(cfg.channels, cfg.channels_at(stage_resolution(s)))
                                      for s in range(cfg.num_stages))

    def stage_resolution(self, stage: int) -> int:
        return self.cfg.stage_resolution(stage)

    def forward(self, img: Tensor, stage: int | None = None, alpha: float = 1.0) -> Tensor:
        if img.ndim != 4:
            raise ValueError(f"images must be [N, C, H, W], not {list(img.shape)}")
        stage = resolution_stage(img.shape[-1]) if stage is None else stage
        res = self.cfg.stage_resolution(stage)
        if tuple(img.shape[1:]) != (self.img_channels, res, res):
            raise ValueError(f"images at stage {stage} must be [N, {self.img_channels}, {res}, {res}], "
                             f"not {list(img.shape)}")
        alpha = min(max(float(alpha), 0.0), 1.0)
        img = img.contiguous(memory_format=memory_format(self.cfg.channels_last))
        x = self.from_rgb[stage](img)
        if stage > 0:
            x = self.blocks[stage](x)
            if alpha < 1.0:
                x = torch.lerp(self.from_rgb[stage - 1](F.avg_pool2d(img, 2)), x, alpha)
            for s in range(stage - 1, 0, -1):
                x = self.blocks[s](x)
        return self.blocks[0](x)


# --------------------------------------------------------------------------- growth


@dataclass(frozen=True)
class GrowthSchedule:
    """Which (stage, alpha) training is at after `nimg` images: stage 0 for stabilize_kimg, then for each
    further stage fade_kimg with alpha rising linearly 0 -> 1 and stabilize_kimg at alpha 1 (the paper:
    800k images each); after the last stage's fade-in, (max_stage, 1) for ever. A pure function of nimg,
    so a resumed run is at exactly the same point."""

    max_stage: int
    stabilize_kimg: float = 800.0
    fade_kimg: float = 800.0

    def at(self, nimg: int) -> tuple[int, float]:
        stab, fade = round(self.stabilize_kimg * 1000), round(self.fade_kimg * 1000)
        if nimg < stab or self.max_stage == 0:
            return 0, 1.0
        t = nimg - stab
        stage = 1 + t // (fade + stab)
        if stage > self.max_stage:
            return self.max_stage, 1.0
        into = t - (stage - 1) * (fade + stab)
        return int(stage), (min(into / fade, 1.0) if fade > 0 else 1.0)

    def stage_end_kimg(self, stage: int) -> float:
        """kimg at which `stage` is done (faded in and stabilized): the natural end of a training stage."""
        if not 0 <= stage <= self.max_stage:
            raise ValueError(f"stage must be in 0..{self.max_stage}, not {stage}")
        return self.stabilize_kimg + stage * (self.fade_kimg + self.stabilize_kimg)

    def kimg_to_full_resolution(self) -> float:
        """Images (kimg) until the last stage is fully faded in."""
        return self.max_stage * (self.fade_kimg + self.stabilize_kimg)


def fade_reals(images: Tensor, stage: int, alpha: float = 1.0) -> Tensor:
    """Real images for D at (stage, alpha): box-downsampled to the stage's resolution and, during a fade-in,
    lerped from their own 2x average-pooled-then-upsampled version, as G's output is (the reference's
    process_reals)."""
    res = stage_resolution(stage)
    if images.shape[-1] < res or images.shape[-1] % res:
        raise ValueError(f"images of size {images.shape[-1]} cannot be reduced to {res}x{res}")
    if images.shape[-1] != res:
        images = F.avg_pool2d(images, images.shape[-1] // res)
    alpha = min(max(float(alpha), 0.0), 1.0)
    if stage > 0 and alpha < 1.0:
        low = F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="nearest")
        images = torch.lerp(low, images, alpha)
    return images
