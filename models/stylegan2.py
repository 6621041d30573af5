"""StyleGAN2 (the behaviour of NVlabs/stylegan2-ada-pytorch `training/networks.py`) in plain PyTorch.

One small module per concept: EqualLinear and MappingNetwork (shared with StyleGAN3: models.style_layers),
EqualConv2d, ModulatedConv2d, SynthesisLayer (modulated conv + noise + bias + activation), ToRGB,
SynthesisBlock (skip architecture), Generator; DiscriminatorBlock (residual), MinibatchStd,
DiscriminatorEpilogue, Discriminator. Unconditional only.

Modules, parameter names, shapes and initialization order follow the reference, so with the same seed the
networks start from the same weights, their state dicts load each other's tensors (the reference also
stores its `resample_filter` constants, which are not persistent here), and `preset(512)` has exactly the
parameter counts the reference prints for its `auto` config at 512x512.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from models import ops
from models.style_layers import EqualLinear, MappingNetwork, full_precision, precision  # noqa: F401  (re-exported)

Tensor = torch.Tensor
NOISE_MODES = ("random", "const", "none")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StyleGAN2Config:
    """Architecture of a StyleGAN2 generator/discriminator pair (the reference's G_kwargs/D_kwargs)."""

    resolution: int = 256                   # image size, a power of two >= 4
    channels: int = 3                       # image channels (3 = RGB)
    z_dim: int = 512                        # input latent size
    w_dim: int = 512                        # intermediate latent size
    mapping_layers: int = 8                 # fully connected layers in the mapping network
    mapping_lr: float = 0.01                # learning-rate multiplier of the mapping layers
    w_avg_beta: float = 0.995               # decay of the tracked average w (truncation centre)
    channel_base: int = 32768               # feature maps at resolution r: min(channel_base // r, channel_max)
    channel_max: int = 512
    mbstd_group: int = 4                    # minibatch-std group size, 0 = the whole batch
    mbstd_channels: int = 1                 # minibatch-std features, 0 = no minibatch-std layer
    conv_clamp: float | None = 256.0        # clamp conv outputs to +-X (train.py always sets 256), None = off
    d_architecture: str = "resnet"          # discriminator blocks: 'resnet' or 'orig'
    resample_filter: tuple[int, ...] = (1, 3, 3, 1)  # low-pass FIR taps for up/downsampling
    fused_modconv: bool | None = None       # grouped-conv modulation; None = at inference only (see SynthesisBlock)
    use_noise: bool = True                  # per-pixel noise inputs in G's layers (the reference's use_noise)
    channels_last: bool = False             # run convolutions on channels_last activations
    num_fp16_res: int = 4                   # under autocast, only the N highest resolutions run in half
                                            # precision; the rest, mapping and D's head stay fp32 (train.py: 4)

    def __post_init__(self):
        r = self.resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"resolution must be a power of two >= 4, not {r}")
        if self.d_architecture not in ("resnet", "orig"):
            raise ValueError(f"d_architecture must be 'resnet' or 'orig', not {self.d_architecture!r}")
        if self.channels_at(r) < 1:  # as PGGANConfig: found by a `--channel-base 1` that divided by zero
            raise ValueError(f"channel_base {self.channel_base} (or channel_max {self.channel_max}) leaves no "
                             f"feature maps at {r}: give at least {r}")

    def channels_at(self, res: int) -> int:
        """Feature maps of the blocks working at resolution `res`."""
        return min(self.channel_base // res, self.channel_max)

    @property
    def block_resolutions(self) -> list[int]:
        return [2 ** i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def fp16_resolution(self) -> int:
        """Lowest resolution whose blocks may run in half precision under autocast."""
        return max(2 ** (int(math.log2(self.resolution)) + 1 - self.num_fp16_res), 8)

    def to_dict(self) -> dict:
        """Plain python values (checkpoint-friendly: loads with torch.load(weights_only=True))."""
        d = asdict(self)
        d["resample_filter"] = list(d["resample_filter"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "StyleGAN2Config":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "resample_filter" in d:
            d["resample_filter"] = tuple(d["resample_filter"])
        return cls(**d)


@dataclass(frozen=True)
class TrainDefaults:
    """Training hyperparameters of a preset (the reference's train.py spec + training_loop defaults)."""

    ref_gpus: int                           # GPUs the preset was designed for
    minibatch: int                          # total images per step
    batch_gpu: int                          # images per GPU per accumulation round (minibatch // ref_gpus)
    mbstd_group: int                        # minibatch-std group size
    lr: float                               # Adam learning rate (G and D)
    r1_gamma: float                         # R1 regularization weight
    ema_kimg: float                         # G_ema half-life in kimg
    ema_rampup: float | None                # EMA ramp-up coefficient, None = no ramp-up
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas
    g_reg_interval: int = 4                 # lazy path-length regularization every N steps
    d_reg_interval: int = 16                # lazy R1 every N steps
    pl_weight: float = 2.0                  # path-length regularization weight, 0 = off
    style_mixing_prob: float = 0.9          # probability of mixing two latents in a batch
    ada_target: float = 0.6                 # ADA target for sign(D(real))


# The reference's 'auto' formulas (train.py), once: the preset below and models.arch's family defaults use them.
def auto_minibatch(resolution: int, gpus: int = 1) -> int:
    return max(min(gpus * min(4096 // resolution, 32), 64), gpus)


def auto_r1_gamma(resolution: int, minibatch: int) -> float:
    return 0.0002 * (resolution ** 2) / minibatch


def auto_ema_kimg(minibatch: int) -> float:
    return minibatch * 10 / 32


# The reference's train.py cfg_specs ('auto' is filled in from resolution and GPU count).
_SPECS: dict[str, dict] = {
    "auto":      dict(ref_gpus=-1, mb=-1, mbstd=-1, fmaps=-1,  lrate=-1,     gamma=-1,   ema=-1,  ramp=0.05, map=2),
    "stylegan2": dict(ref_gpus=8,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=10,   ema=10,  ramp=None, map=8),
    "paper256":  dict(ref_gpus=8,  mb=64, mbstd=8,  fmaps=0.5, lrate=0.0025, gamma=1,    ema=20,  ramp=None, map=8),
    "paper512":  dict(ref_gpus=8,  mb=64, mbstd=8,  fmaps=1,   lrate=0.0025, gamma=0.5,  ema=20,  ramp=None, map=8),
    "paper1024": dict(ref_gpus=8,  mb=32, mbstd=4,  fmaps=1,   lrate=0.002,  gamma=2,    ema=10,  ramp=None, map=8),
    "cifar":     dict(ref_gpus=2,  mb=64, mbstd=32, fmaps=1,   lrate=0.0025, gamma=0.01, ema=500, ramp=0.05, map=2),
}
PRESETS = tuple(_SPECS)


def preset(resolution: int, gpus: int = 1, kind: str = "auto",
           channels: int = 3) -> tuple[StyleGAN2Config, TrainDefaults]:
    """Architecture and training defaults as the reference's train.py --cfg computes them.

    'auto' scales with resolution and GPU count: minibatch max(min(gpus * min(4096 // res, 32), 64), gpus),
    mbstd group min(minibatch // gpus, 4), fmaps 1 from 512 up (else 0.5), lr 0.002 from 1024 up (else
    0.0025), R1 gamma 0.0002 * res^2 / minibatch, EMA minibatch * 10 / 32 kimg, ramp-up 0.05, 2 mapping layers.
    The others are the reference's fixed configs ('stylegan2' = paper config F, 'paperNNN', 'cifar'); as
    there, they ignore `gpus` (batch_gpu = minibatch // ref_gpus; accumulate when running on fewer GPUs).
    """
    if kind not in _SPECS:
        raise ValueError(f"unknown preset {kind!r}; choose from {', '.join(PRESETS)}")
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    spec = dict(_SPECS[kind])
    res = resolution
    if kind == "auto":
        spec["ref_gpus"] = gpus
        spec["mb"] = auto_minibatch(res, gpus)
        spec["mbstd"] = min(spec["mb"] // gpus, 4)
        spec["fmaps"] = 1 if res >= 512 else 0.5
        spec["lrate"] = 0.002 if res >= 1024 else 0.0025
        spec["gamma"] = auto_r1_gamma(res, spec["mb"])
        spec["ema"] = auto_ema_kimg(spec["mb"])
    cifar = kind == "cifar"
    cfg = StyleGAN2Config(
        resolution=res, channels=channels, mapping_layers=spec["map"], channel_base=int(spec["fmaps"] * 32768),
        channel_max=512, mbstd_group=spec["mbstd"], conv_clamp=256.0,
        d_architecture="orig" if cifar else "resnet",
    )
    train = TrainDefaults(
        ref_gpus=spec["ref_gpus"], minibatch=spec["mb"],
        batch_gpu=spec["mb"] // spec["ref_gpus"], mbstd_group=spec["mbstd"], lr=spec["lrate"],
        r1_gamma=spec["gamma"], ema_kimg=spec["ema"], ema_rampup=spec["ramp"],
        pl_weight=0.0 if cifar else 2.0, style_mixing_prob=0.0 if cifar else 0.9,
    )
    return cfg, train


# --------------------------------------------------------------------------- layers


class EqualConv2d(nn.Module):
    """Convolution with equalized learning rate, optional 2x up/downsampling, bias, activation, clamp."""

    resample_filter: Tensor  # a buffer (register_buffer): typed for mypy

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1,
                 resample_filter: tuple[int, ...] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter), persistent=False)
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ops.activation_gain(activation)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels])) if bias else None

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = ops.conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by a style (an affine map of w), with
    optional demodulation (output normalized to unit expected variance) and 2x upsampling."""

    resample_filter: Tensor  # a buffer (register_buffer): typed for mypy

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 3,
                 demodulate: bool = True, up: int = 1, resample_filter: tuple[int, ...] = (1, 3, 3, 1)):
        super().__init__()
        self.up, self.demodulate, self.padding = up, demodulate, kernel_size // 2
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter), persistent=False)
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        # Without demodulation the weight's He gain goes on the style (the reference's ToRGB does so).
        self.style_gain = 1.0 if demodulate else 1 / math.sqrt(in_channels * kernel_size ** 2)

    def modulated_conv(self, x: Tensor, w: Tensor, noise: Tensor | None = None, fused: bool = True) -> Tensor:
        styles = self.affine(w)
        if self.style_gain != 1.0:
            styles = styles * self.style_gain
        return ops.modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                                    resample_filter=self.resample_filter, demodulate=self.demodulate, fused=fused)

    def forward(self, x: Tensor, w: Tensor, fused: bool = True) -> Tensor:
        return self.modulated_conv(x, w, fused=fused)


class SynthesisLayer(ModulatedConv2d):
    """Modulated 3x3 conv + per-pixel noise with a learned strength + bias + leaky ReLU (+ clamp).

    The noise is fresh per call ('random'), a fixed per-layer image ('const', reproducible), or off ('none').
    """

    noise_const: Tensor  # a buffer (register_buffer) when use_noise: typed for mypy

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu",
                 resample_filter: tuple[int, ...] = (1, 3, 3, 1), conv_clamp: float | None = None):
        super().__init__(in_channels, out_channels, w_dim, kernel_size, demodulate=True, up=up,
                         resample_filter=resample_filter)
        self.resolution, self.use_noise, self.conv_clamp = resolution, use_noise, conv_clamp
        self.activation = activation
        self.act_gain = ops.activation_gain(activation)
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def noise(self, x: Tensor, noise_mode: str) -> Tensor | None:
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "random":
            r = self.resolution
            return torch.randn([x.shape[0], 1, r, r], device=x.device, dtype=x.dtype) * self.noise_strength
        if noise_mode == "const":
            return self.noise_const * self.noise_strength
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, not {noise_mode!r}")

    def forward(self, x: Tensor, w: Tensor, noise_mode: str = "random", fused: bool = True,  # type: ignore[override]
                gain: float = 1.0) -> Tensor:  # (used only as a SynthesisLayer, never where a ModulatedConv2d is)
        x = self.modulated_conv(x, w, noise=self.noise(x, noise_mode), fused=fused)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return ops.bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGB(ModulatedConv2d):
    """1x1 modulated conv (no demodulation) to image channels, plus bias."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__(in_channels, out_channels, w_dim, kernel_size, demodulate=False)
        self.conv_clamp = conv_clamp
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: Tensor, w: Tensor, fused: bool = True) -> Tensor:
        x = self.modulated_conv(x, w, fused=fused)
        return ops.bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (learned constant | 2x-upsampling conv), conv, ToRGB added to
    the upsampled image from the previous block."""

    resample_filter: Tensor  # a buffer (register_buffer): typed for mypy

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 resample_filter: tuple[int, ...] = (1, 3, 3, 1), conv_clamp: float | None = None,
                 channels_last: bool = False, use_fp16: bool = False, use_noise: bool = True):
        super().__init__()
        self.in_channels, self.resolution, self.img_channels = in_channels, resolution, img_channels
        self.channels_last, self.use_fp16 = channels_last, use_fp16
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter), persistent=False)
        self.num_conv = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, use_noise=use_noise,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp,
                                    use_noise=use_noise)
        self.num_conv += 1
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_torgb = 1

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor, noise_mode: str = "random",
                fused_modconv: bool | None = None) -> tuple[Tensor, Tensor]:
        """ws: [N, num_conv + num_torgb, w_dim]. Returns (features, image so far)."""
        w_iter = iter(ws.unbind(dim=1))
        fmt = ops.memory_format(self.channels_last)
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1]).contiguous(memory_format=fmt)
        else:
            x = x.contiguous(memory_format=fmt)  # type: ignore[union-attr]  # the previous block's features
        half = self.use_fp16 and torch.is_autocast_enabled(x.device.type)
        if fused_modconv is None:
            # The reference fuses at inference when in fp32 or for one sample. On CPU the grouped conv is
            # several times slower than the split form for batches > 1, so there only one sample is fused.
            fused_modconv = not self.training and (x.shape[0] == 1 or (not half and x.device.type != "cpu"))
        with precision(self.use_fp16, x):
            if not half:
                x = x.to(torch.float32)
            if self.in_channels != 0:
                x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused=fused_modconv)
            y = self.torgb(x, next(w_iter), fused=fused_modconv)
        with full_precision(x):  # the image is accumulated in fp32
            y = y.to(torch.float32, memory_format=torch.contiguous_format)
            img = y if img is None else ops.upsample2d(img, self.resample_filter).add_(y)
        return x, img


class SynthesisNetwork(nn.Module):
    """ws -> image: one SynthesisBlock per resolution from 4x4 up."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.w_dim, self.resolution, self.img_channels = cfg.w_dim, cfg.resolution, cfg.channels
        self.block_resolutions = cfg.block_resolutions
        self.num_ws = 0
        for res in self.block_resolutions:
            in_ch = cfg.channels_at(res // 2) if res > 4 else 0
            block = SynthesisBlock(in_ch, cfg.channels_at(res), cfg.w_dim, res, cfg.channels,
                                   resample_filter=cfg.resample_filter, conv_clamp=cfg.conv_clamp,
                                   channels_last=cfg.channels_last, use_fp16=res >= cfg.fp16_resolution,
                                   use_noise=cfg.use_noise)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's ToRGB; earlier ToRGBs share the next block's first w
        self.fused_modconv = cfg.fused_modconv

    def forward(self, ws: Tensor, noise_mode: str = "random", fused_modconv: bool | None = None) -> Tensor:
        """ws: [N, num_ws, w_dim] -> images [N, C, H, W] (about [-1, 1] once trained)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, not {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], not {list(ws.shape)}")
        if fused_modconv is None:
            fused_modconv = self.fused_modconv
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode, fused_modconv=fused_modconv)
            w_idx += block.num_conv
        return img  # type: ignore[return-value]  # set by the first block


class Generator(nn.Module):
    """z -> image. `G.mapping(z, psi)` gives ws, `G.synthesis(ws, noise_mode)` the images."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.w_dim, self.resolution, self.img_channels = cfg.z_dim, cfg.w_dim, cfg.resolution, cfg.channels
        self.synthesis = SynthesisNetwork(cfg)  # built first, like the reference (same init from a seed)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, self.num_ws, num_layers=cfg.mapping_layers,
                                      lr_mul=cfg.mapping_lr, w_avg_beta=cfg.w_avg_beta)

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", fused_modconv: bool | None = None,
                update_w_avg: bool | None = None) -> Tensor:
        """[N, z_dim] -> images [N, channels, resolution, resolution]."""
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg)
        return self.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)


# --------------------------------------------------------------------------- discriminator


class DiscriminatorBlock(nn.Module):
    """One resolution of the discriminator: (fromRGB,) 3x3 conv, 3x3 conv with 2x downsampling, and for
    'resnet' a 1x1 downsampling skip; the two paths are summed with gain sqrt(1/2) each."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, resolution: int,
                 img_channels: int, architecture: str = "resnet", resample_filter: tuple[int, ...] = (1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False, use_fp16: bool = False):
        super().__init__()
        self.in_channels, self.resolution, self.architecture = in_channels, resolution, architecture
        self.channels_last, self.use_fp16 = channels_last, use_fp16
        if in_channels == 0:
            self.fromrgb = EqualConv2d(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = EqualConv2d(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualConv2d(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                                 resample_filter=resample_filter, conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = EqualConv2d(tmp_channels, out_channels, 1, bias=False, down=2,
                                    resample_filter=resample_filter)

    def forward(self, x: Tensor) -> Tensor:
        """x: the image for the first block, else the previous block's features."""
        x = x.contiguous(memory_format=ops.memory_format(self.channels_last))
        with precision(self.use_fp16, x):
            if not self.use_fp16:
                x = x.to(torch.float32)
            if self.in_channels == 0:
                x = self.fromrgb(x)
            if self.architecture == "resnet":
                y = self.skip(x, gain=math.sqrt(0.5))
                x = self.conv0(x)
                return y.add_(self.conv1(x, gain=math.sqrt(0.5)))  # conv1 keeps its output for backward
            return self.conv1(self.conv0(x))


class MinibatchStd(nn.Module):
    """Appends the standard deviation of features across groups of `group_size` samples as extra channels."""

    def __init__(self, group_size: int, num_channels: int = 1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size else n
        if n % g:
            raise ValueError(f"batch size {n} is not a multiple of the minibatch-std group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)           # sample n = g_index * (n // g) + group
        y = y - y.mean(dim=0)                           # deviation from the group mean
        y = (y.square().mean(dim=0) + 1e-8).sqrt()      # std over the group  [n/g, F, c/F, H, W]
        y = y.mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)  # average over channels and pixels  [n/g, F, 1, 1]
        y = y.repeat(g, 1, h, w)                        # back to every sample and pixel  [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head: minibatch std, 3x3 conv, fully connected, one logit."""

    def __init__(self, in_channels: int, resolution: int = 4, mbstd_group: int = 4, mbstd_channels: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.mbstd = MinibatchStd(mbstd_group, mbstd_channels) if mbstd_channels > 0 else None
        self.conv = EqualConv2d(in_channels + mbstd_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = EqualLinear(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = EqualLinear(in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        with full_precision(x):
            x = x.to(torch.float32, memory_format=torch.contiguous_format)
            if self.mbstd is not None:
                x = self.mbstd(x)
            x = self.conv(x)
            return self.out(self.fc(x.flatten(1)))


class Discriminator(nn.Module):
    """image [N, C, H, W] -> logits [N, 1] (real > fake). Residual blocks down to 4x4, then the epilogue."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        if cfg.resolution < 8:
            raise ValueError("the discriminator needs resolution >= 8 (its 4x4 head takes features, not pixels)")
        self.cfg = cfg
        self.resolution, self.img_channels = cfg.resolution, cfg.channels
        self.block_resolutions = cfg.block_resolutions[:0:-1]  # resolution, ..., 8
        for res in self.block_resolutions:
            in_ch = cfg.channels_at(res) if res < cfg.resolution else 0
            block = DiscriminatorBlock(in_ch, cfg.channels_at(res), cfg.channels_at(res // 2), res, cfg.channels,
                                       architecture=cfg.d_architecture, resample_filter=cfg.resample_filter,
                                       conv_clamp=cfg.conv_clamp, channels_last=cfg.channels_last,
                                       use_fp16=res >= cfg.fp16_resolution)
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(cfg.channels_at(4), 4, cfg.mbstd_group, cfg.mbstd_channels,
                                        conv_clamp=cfg.conv_clamp)

    def forward(self, img: Tensor) -> Tensor:
        expected = (self.img_channels, self.resolution, self.resolution)
        if img.ndim != 4 or tuple(img.shape[1:]) != expected:
            raise ValueError(f"images must be [N, {', '.join(map(str, expected))}], not {list(img.shape)}")
        x = img
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        return self.b4(x)
