"""StyleGAN3 (the behaviour of NVlabs/stylegan3 `training/networks_stylegan3.py`) in plain PyTorch.

Alias-free generator: a mapping network (2 layers), Fourier-feature input with a learned rotation and
translation (SynthesisInput), then layers that each run a modulated convolution and a *filtered* leaky
ReLU: upsample with a low-pass FIR filter, apply the nonlinearity at the higher rate, low-pass and
downsample again. The op (models.filtered_lrelu) computes the reference's non-CUDA `_filtered_lrelu_ref`
(bias, upfirdn2d, bias_act, upfirdn2d) in plain torch, so nothing is compiled, and keeps one byte per
upsampled sample for its backward pass instead of the upsampled maps. Each layer tracks the magnitude of its input (magnitude EMA) and divides
by it. StyleGAN3-R is the same network with 1x1 convolutions, twice the channels and radially symmetric
(jinc) downsampling filters. The discriminator is StyleGAN2's (models.stylegan2.Discriminator).

Module, parameter and buffer names are exactly the reference's state_dict keys (`synthesis.L3_52_1024.
affine.weight`, `mapping.w_avg`, `synthesis.input.freqs`...), because `ganflow import` loads NVIDIA's
tensors by name; modules are built and initialized in the reference's order, so the same torch seed gives
the same initial state dict. Unconditional only (c_dim 0).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import scipy.signal
import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from models.filtered_lrelu import filtered_lrelu, upfirdn
from models.style_layers import EqualLinear, MappingNetwork, full_precision, precision
from models.stylegan2 import NOISE_MODES

Tensor = torch.Tensor
KINDS = ("stylegan3-t", "stylegan3-r")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class StyleGAN3Config:
    """Architecture of a StyleGAN3 generator (the reference's G_kwargs, with its defaults)."""

    resolution: int = 256                   # image size, a power of two >= 16
    channels: int = 3                       # image channels (3 = RGB)
    z_dim: int = 512                        # input latent size
    w_dim: int = 512                        # intermediate latent size
    mapping_layers: int = 2                 # fully connected layers in the mapping network
    mapping_lr: float = 0.01                # learning-rate multiplier of the mapping layers
    w_avg_beta: float = 0.998               # decay of the tracked average w (truncation centre)
    channel_base: int = 32768               # feature maps of a layer: min(channel_base / 2 / cutoff, channel_max)
    channel_max: int = 512                  #   (StyleGAN3-R doubles both: 65536 and 1024)
    num_layers: int = 14                    # synthesis layers, not counting the input and ToRGB
    num_critical: int = 2                   # critically sampled layers at the end
    first_cutoff: float = 2.0               # cutoff frequency of the first layer (f_c,0)
    first_stopband: float = 2 ** 2.1        # minimum stopband of the first layer (f_t,0)
    last_stopband_rel: float = 2 ** 0.3     # minimum stopband of the last layer, relative to its cutoff
    margin_size: int = 10                   # extra pixels computed outside the image on each side
    output_scale: float = 0.25              # scale of the output image
    num_fp16_res: int = 4                   # under autocast, layers sampled above resolution / 2^N run in half
    conv_kernel: int = 3                    # convolution size (StyleGAN3-R: 1); ToRGB is always 1x1
    filter_size: int = 6                    # low-pass filter taps per factor of up/downsampling
    lrelu_upsampling: int = 2               # sampling-rate multiplier for the leaky ReLU
    use_radial_filters: bool = False        # radially symmetric downsampling filters (StyleGAN3-R)
    conv_clamp: float | None = 256.0        # clamp layer outputs to +-X, None = off
    magnitude_ema_beta: float = 0.999       # decay of the input-magnitude average (train.py: 0.5 ** (batch / 20k))

    def __post_init__(self):
        r = self.resolution
        if r < 16 or r & (r - 1):
            raise ValueError(f"StyleGAN3 resolution must be a power of two >= 16, not {r}")
        if self.num_layers <= self.num_critical:
            raise ValueError(f"num_layers ({self.num_layers}) must exceed num_critical ({self.num_critical})")

    @property
    def kind(self) -> str:
        """'stylegan3-r' for radial filters, else 'stylegan3-t' (the reference's two configs)."""
        return "stylegan3-r" if self.use_radial_filters else "stylegan3-t"

    def to_dict(self) -> dict:
        """Plain python values (checkpoint-friendly: loads with torch.load(weights_only=True))."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StyleGAN3Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def preset(resolution: int, kind: str = "stylegan3-t", channels: int = 3, batch: int = 32,
           channel_base: int = 32768, channel_max: int = 512) -> StyleGAN3Config:
    """The generator train.py builds for --cfg stylegan3-t|r: mapping depth 2, magnitude EMA half-life of
    20 kimg at this batch, and for R 1x1 convolutions, doubled feature maps and radial filters."""
    if kind not in KINDS:
        raise ValueError(f"unknown StyleGAN3 kind {kind!r}; choose from {', '.join(KINDS)}")
    r = kind == "stylegan3-r"
    return StyleGAN3Config(
        resolution=resolution, channels=channels, mapping_layers=2,
        channel_base=channel_base * (2 if r else 1), channel_max=channel_max * (2 if r else 1),
        conv_kernel=1 if r else 3, use_radial_filters=r, magnitude_ema_beta=0.5 ** (batch / (20 * 1e3)),
    )


# --------------------------------------------------------------------------- filtered leaky ReLU


def blur(images: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of std `sigma` pixels (3 sigma each side, zero padding), as the reference's run_D blurs
    what StyleGAN3-R's discriminator sees early in training; sigma < 1/3 leaves the images as they are."""
    size = int(np.floor(sigma * 3))
    if size <= 0:
        return images
    f = torch.arange(-size, size + 1, device=images.device).div(sigma).square().neg().exp2()
    return upfirdn(images, f / f.sum(), 1, 1, (size, size, size, size), gain=1.0)


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float,
                          radial: bool = False) -> Tensor | None:
    """Kaiser-windowed low-pass filter (separable, scipy.signal.firwin) or its radially symmetric jinc
    version (2-D); None for one tap (identity)."""
    assert numtaps >= 1
    if numtaps == 1:
        return None
    if not radial:
        return torch.as_tensor(scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs),
                               dtype=torch.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = scipy.special.j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    beta = scipy.signal.kaiser_beta(scipy.signal.kaiser_atten(numtaps, width / (fs / 2)))
    w = np.kaiser(numtaps, beta)
    f *= np.outer(w, w)
    f /= np.sum(f)
    return torch.as_tensor(f, dtype=torch.float32)


def modulated_conv2d(x: Tensor, w: Tensor, s: Tensor, demodulate: bool = True, padding: int = 0,
                     input_gain: Tensor | None = None, fused: bool = True) -> Tensor:
    """StyleGAN3's modulated convolution: weights and styles pre-normalized, styles [N, I] scale the input
    channels, demodulation to unit output norm, then the input gain (1 / tracked input magnitude).

    fused=True is the reference's grouped convolution over per-sample weights; fused=False scales the
    activations around one shared-weight convolution (same result up to rounding, faster on CPU).
    """
    n = x.shape[0]
    if demodulate:
        w = w * w.square().mean([1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean().rsqrt()  # one norm over the whole batch, as the reference
    if fused:
        wm = w.unsqueeze(0) * s.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
        if demodulate:
            wm = wm * (wm.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(n, -1, 1, 1, 1)
        if input_gain is not None:
            wm = wm * input_gain.expand(n, w.shape[1]).reshape(n, 1, -1, 1, 1)
        x = F.conv2d(x.reshape(1, -1, *x.shape[2:]), wm.reshape(-1, *w.shape[1:]).to(x.dtype),
                     padding=padding, groups=n)
        return x.reshape(n, -1, *x.shape[2:])
    scale = s if input_gain is None else s * input_gain.expand(n, w.shape[1])
    x = F.conv2d(x * scale.to(x.dtype).reshape(n, -1, 1, 1), w.to(x.dtype), padding=padding)
    if demodulate:
        with full_precision(x):
            dcoefs = (s.square() @ w.square().sum([2, 3]).t() + 1e-8).rsqrt()  # [N, O]
        x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
    return x


# --------------------------------------------------------------------------- layers


class SynthesisInput(nn.Module):
    """Fourier features: sinusoids of random frequencies in a disc of radius `bandwidth`, rotated and
    translated per sample by an affine map of w (initialized to the identity), then mixed by a learned
    channel matrix."""

    transform: Tensor  # buffers (register_buffer): typed for mypy
    freqs: Tensor
    phases: Tensor

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim, self.channels, self.size = w_dim, channels, int(size)
        self.sampling_rate, self.bandwidth = float(sampling_rate), float(bandwidth)
        freqs = torch.randn([channels, 2])  # uniform in the disc: these draws come first, as the reference
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs /= radii * radii.square().exp().pow(0.25)
        freqs *= bandwidth
        phases = torch.rand([channels]) - 0.5
        self.weight = nn.Parameter(torch.randn([channels, channels]))
        self.affine = EqualLinear(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3, 3))  # user-specified inverse transform of the image
        self.register_buffer("freqs", freqs)
        self.register_buffer("phases", phases)

    def forward(self, w: Tensor) -> Tensor:
        with full_precision(w):  # phases need fp32 (the reference never runs this layer in half precision)
            return self._features(w.to(torch.float32))

    def _features(self, w: Tensor) -> Tensor:
        n = w.shape[0]
        t = self.affine(w)  # (r_c, r_s, t_x, t_y)
        t = t / t[:, :2].norm(dim=1, keepdim=True)
        m_r = torch.eye(3, device=w.device).unsqueeze(0).repeat([n, 1, 1])  # inverse rotation
        m_r[:, 0, 0], m_r[:, 0, 1], m_r[:, 1, 0], m_r[:, 1, 1] = t[:, 0], -t[:, 1], t[:, 1], t[:, 0]
        m_t = torch.eye(3, device=w.device).unsqueeze(0).repeat([n, 1, 1])  # inverse translation
        m_t[:, 0, 2], m_t[:, 1, 2] = -t[:, 2], -t[:, 3]
        transforms = m_r @ m_t @ self.transform.unsqueeze(0)
        freqs, phases = self.freqs.unsqueeze(0), self.phases.unsqueeze(0)
        phases = phases + (freqs @ transforms[:, :2, 2:]).squeeze(2)
        freqs = freqs @ transforms[:, :2, :2]
        # Dampen frequencies that a user transform pushes out of band.
        amplitudes = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)
        theta = torch.eye(2, 3, device=w.device)
        theta[0, 0] = theta[1, 1] = 0.5 * self.size / self.sampling_rate
        grids = F.affine_grid(theta.unsqueeze(0), [1, 1, self.size, self.size], align_corners=False)
        x = (grids.unsqueeze(3) @ freqs.permute(0, 2, 1).unsqueeze(1).unsqueeze(2)).squeeze(3)  # [N, H, W, C]
        x = x + phases.unsqueeze(1).unsqueeze(2)
        x = torch.sin(x * (np.pi * 2))
        x = x * amplitudes.unsqueeze(1).unsqueeze(2)
        x = x @ (self.weight / np.sqrt(self.channels)).t()
        return x.permute(0, 3, 1, 2)  # [N, C, H, W]


class SynthesisLayer(nn.Module):
    """Modulated conv (input divided by its tracked magnitude) + bias + filtered leaky ReLU (+ clamp);
    the last one is the ToRGB (1x1, no demodulation, linear)."""

    magnitude_ema: Tensor  # buffers (register_buffer): typed for mypy
    up_filter: Tensor
    down_filter: Tensor

    def __init__(self, w_dim: int, is_torgb: bool, is_critically_sampled: bool, use_fp16: bool,
                 in_channels: int, out_channels: int, in_size: int, out_size: int,
                 in_sampling_rate: int, out_sampling_rate: int, in_cutoff: float, out_cutoff: float,
                 in_half_width: float, out_half_width: float, conv_kernel: int = 3, filter_size: int = 6,
                 lrelu_upsampling: int = 2, use_radial_filters: bool = False, conv_clamp: float | None = 256,
                 magnitude_ema_beta: float = 0.999):
        super().__init__()
        self.w_dim, self.is_torgb, self.use_fp16 = w_dim, is_torgb, use_fp16
        self.is_critically_sampled = is_critically_sampled
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = int(in_size), int(out_size)
        self.in_sampling_rate, self.out_sampling_rate = in_sampling_rate, out_sampling_rate
        self.tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp, self.magnitude_ema_beta = conv_clamp, magnitude_ema_beta

        self.affine = EqualLinear(w_dim, in_channels, bias_init=1, weight_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, self.conv_kernel, self.conv_kernel]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(self.tmp_sampling_rate / in_sampling_rate))
        assert in_sampling_rate * self.up_factor == self.tmp_sampling_rate
        self.up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        self.register_buffer("up_filter", design_lowpass_filter(
            self.up_taps, in_cutoff, in_half_width * 2, self.tmp_sampling_rate))
        self.down_factor = int(np.rint(self.tmp_sampling_rate / out_sampling_rate))
        assert out_sampling_rate * self.down_factor == self.tmp_sampling_rate
        self.down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        self.register_buffer("down_filter", design_lowpass_filter(
            self.down_taps, out_cutoff, out_half_width * 2, self.tmp_sampling_rate, radial=self.down_radial))

        # Padding that centres the samples as the reference's symmetric interpretation (its Appendix C.3).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += self.up_taps + self.down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = [int(pad_lo), int(pad_hi), int(pad_lo), int(pad_hi)]

    def forward(self, x: Tensor, w: Tensor, update_emas: bool = False, fused: bool = True) -> Tensor:
        if update_emas:
            with torch.no_grad():
                magnitude = x.detach().to(torch.float32).square().mean()
                self.magnitude_ema.copy_(magnitude.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()
        with full_precision(x):  # styles in fp32 (the reference's are): only the convolutions may run in half
            styles = self.affine(w.to(torch.float32))
            if self.is_torgb:
                styles = styles * (1 / np.sqrt(self.in_channels * self.conv_kernel ** 2))
        with precision(self.use_fp16, x):
            if not self.use_fp16:
                x = x.to(torch.float32)
            x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb,
                                 padding=self.conv_kernel - 1, input_gain=input_gain, fused=fused)
            gain, slope = (1.0, 1.0) if self.is_torgb else (np.sqrt(2), 0.2)
            return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, self.up_factor,
                                  self.down_factor, self.padding, gain=float(gain), slope=slope,
                                  clamp=self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws -> image: Fourier input, num_layers layers whose cutoffs and stopbands grow geometrically to the
    image's Nyquist rate, then ToRGB."""

    def __init__(self, cfg: StyleGAN3Config):
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = cfg.w_dim, cfg.resolution, cfg.channels
        self.num_ws = cfg.num_layers + 2
        self.num_layers, self.num_critical = cfg.num_layers, cfg.num_critical
        self.margin_size, self.output_scale, self.num_fp16_res = cfg.margin_size, cfg.output_scale, cfg.num_fp16_res

        res = cfg.resolution
        last_cutoff = res / 2
        last_stopband = last_cutoff * cfg.last_stopband_rel
        exponents = np.minimum(np.arange(cfg.num_layers + 1) / (cfg.num_layers - cfg.num_critical), 1)
        cutoffs = cfg.first_cutoff * (last_cutoff / cfg.first_cutoff) ** exponents
        stopbands = cfg.first_stopband * (last_stopband / cfg.first_stopband) ** exponents
        sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
        half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
        sizes = sampling_rates + cfg.margin_size * 2
        sizes[-2:] = res
        channels = np.rint(np.minimum((cfg.channel_base / 2) / cutoffs, cfg.channel_max))
        channels[-1] = cfg.channels

        self.input = SynthesisInput(cfg.w_dim, int(channels[0]), int(sizes[0]), sampling_rates[0], cutoffs[0])
        self.layer_names = []
        for idx in range(cfg.num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim=cfg.w_dim, is_torgb=idx == cfg.num_layers,
                is_critically_sampled=idx >= cfg.num_layers - cfg.num_critical,
                use_fp16=bool(sampling_rates[idx] * (2 ** cfg.num_fp16_res) > res),
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(sampling_rates[prev]), out_sampling_rate=int(sampling_rates[idx]),
                in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev], out_half_width=half_widths[idx],
                conv_kernel=cfg.conv_kernel, filter_size=cfg.filter_size, lrelu_upsampling=cfg.lrelu_upsampling,
                use_radial_filters=cfg.use_radial_filters, conv_clamp=cfg.conv_clamp,
                magnitude_ema_beta=cfg.magnitude_ema_beta)
            name = f"L{idx}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws: Tensor, noise_mode: str = "random", update_emas: bool = False,
                fused_modconv: bool | None = None) -> Tensor:
        """ws: [N, num_ws, w_dim] -> images [N, C, H, W]. noise_mode is accepted for StyleGAN2's API and
        ignored: StyleGAN3 has no noise inputs. update_emas moves each layer's input-magnitude average."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, not {noise_mode!r}")
        if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], not {list(ws.shape)}")
        if fused_modconv is None:
            # The reference always runs the grouped convolution; on CPU the split form is several times
            # faster for batches > 1 (same result up to rounding), so there only one sample is fused.
            fused_modconv = ws.shape[0] == 1 or ws.device.type != "cpu"
        ws = ws.to(torch.float32).unbind(dim=1)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w, update_emas=update_emas, fused=fused_modconv)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x.to(torch.float32)


class Generator(nn.Module):
    """z -> image. `G.mapping(z, psi)` gives ws, `G.synthesis(ws)` the images (StyleGAN2's API)."""

    def __init__(self, cfg: StyleGAN3Config):
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.w_dim, self.resolution, self.img_channels = cfg.z_dim, cfg.w_dim, cfg.resolution, cfg.channels
        self.synthesis = SynthesisNetwork(cfg)  # built first, like the reference (same init from a seed)
        self.num_ws = self.synthesis.num_ws
        # weight_init=1: the reference's FullyConnectedLayer draws randn * (1 / lr_mul) (models.style_layers)
        self.mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, self.num_ws, num_layers=cfg.mapping_layers,
                                      lr_mul=cfg.mapping_lr, w_avg_beta=cfg.w_avg_beta, weight_init=1.0)

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "random", fused_modconv: bool | None = None,
                update_w_avg: bool | None = None, update_emas: bool = False) -> Tensor:
        """[N, z_dim] -> images [N, channels, resolution, resolution]. update_emas (or update_w_avg, the
        StyleGAN2 name) moves w_avg and the magnitude averages, as the reference's update_emas."""
        update = bool(update_emas or update_w_avg)
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg=update)
        return self.synthesis(ws, noise_mode=noise_mode, update_emas=update, fused_modconv=fused_modconv)
