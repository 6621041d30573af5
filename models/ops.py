"""Pure-PyTorch versions of the custom ops StyleGAN2 needs (no CUDA/C++ extension to compile).

They follow the semantics of NVlabs/stylegan2-ada-pytorch `torch_utils/ops` (upfirdn2d, bias_act,
conv2d_resample) and `training/networks.py::modulated_conv2d`, so weights trained with either give the
same images. Every op is built from differentiable torch ops (or has a differentiable backward), so
second-order gradients work: the R1 penalty differentiates through the discriminator's gradient.

Speed: FIR filtering is a depthwise convolution that computes only the kept samples (strided conv for
downsampling, strided transposed conv for upsampling, no zero-stuffing); a convolution with upsampling is
a stride-2 transposed convolution followed by the FIR filter; bias + leaky ReLU + gain + clamp is one
autograd node that keeps only its output for the backward pass.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
Padding = int | Sequence[int]

# Gain that keeps the signal's second moment through an activation (He et al.), as in the reference.
ACTIVATIONS: dict[str, tuple[float, float]] = {  # name -> (slope for x < 0, default gain)
    "linear": (1.0, 1.0),
    "relu": (0.0, math.sqrt(2)),
    "lrelu": (0.2, math.sqrt(2)),
}


def activation_gain(act: str) -> float:
    """The default gain of an activation ('linear', 'relu', 'lrelu')."""
    return ACTIVATIONS[act][1]


# --------------------------------------------------------------------------- FIR filtering


def setup_filter(f: Sequence[float] | Tensor = (1, 3, 3, 1), normalize: bool = True, gain: float = 1.0) -> Tensor:
    """A 2-D float32 FIR filter from 1-D taps (outer product) or a 2-D array; normalized to unit DC gain."""
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim == 1:
        f = torch.outer(f, f)
    assert f.ndim == 2 and f.numel() > 0
    if normalize:
        f = f / f.sum()
    return f * gain


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """int | [x, y] | [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    x0, x1, y0, y1 = padding
    return x0, x1, y0, y1


def _depthwise(f: Tensor, channels: int, x: Tensor, gain: float, flip: bool) -> Tensor:
    """The filter as a depthwise conv weight [C, 1, fh, fw] in x's dtype and memory format."""
    if flip:
        f = f.flip([0, 1])
    w = (f * gain).to(x.dtype)[None, None].expand(channels, 1, *f.shape)
    memory_format = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
    return w.contiguous(memory_format=memory_format)


def _is_channels_last(x: Tensor) -> bool:
    return x.ndim == 4 and x.shape[1] > 1 and x.stride(1) == 1


def _pad_or_crop(x: Tensor, x0: int, x1: int, y0: int, y1: int) -> Tensor:
    """Zero-pad (positive) or crop (negative) the last two dims."""
    if max(x0, x1, y0, y1) > 0:
        x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    if min(x0, x1, y0, y1) < 0:
        x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    return x


def upfirdn2d(x: Tensor, f: Tensor | None, up: int = 1, down: int = 1, padding: Padding = 0,
              flip_filter: bool = False, gain: float = 1.0) -> Tensor:
    """Upsample (insert up-1 zeros after each pixel), pad (negative = crop), FIR-filter, downsample.

    Same contract as the reference's `upfirdn2d` (scipy.signal.upfirdn in 2-D) for x of shape [N, C, H, W]
    and a 2-D filter f (None = identity). Filtering is a true convolution unless flip_filter.
    The common cases run as one strided (transposed) depthwise convolution without zero-stuffing.
    """
    assert x.ndim == 4
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    x0, x1, y0, y1 = _parse_padding(padding)
    fh, fw = f.shape
    channels = x.shape[1]

    if up > 1:
        # Zero-stuffing + padding + convolution with f is a transposed conv with kernel f (unflipped)
        # and padding fw - 1 - x0, when that comes out symmetric and the output size matches.
        tx, ty = fw - 1 - x0, fh - 1 - y0
        same_x = x1 - x0 + up - 1 == 0 and tx >= 0
        same_y = y1 - y0 + up - 1 == 0 and ty >= 0
        if same_x and same_y and tx == ty:
            w = _depthwise(f, channels, x, gain, flip=flip_filter)
            x = F.conv_transpose2d(x, w, stride=up, padding=tx, groups=channels)
            return x if down == 1 else x[:, :, ::down, ::down]
        # General case: zero-stuffing, then a plain filter.
        n, c, h, w_ = x.shape
        x = x.reshape(n, c, h, 1, w_, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w_ * up)

    # Filter (and downsample) as one strided depthwise correlation with the flipped filter.
    w = _depthwise(f, channels, x, gain, flip=not flip_filter)
    if x0 == x1 == y0 == y1 and x0 >= 0:
        return F.conv2d(x, w, stride=down, padding=x0, groups=channels)
    x = _pad_or_crop(x, x0, x1, y0, y1)
    return F.conv2d(x, w, stride=down, groups=channels)


def filter2d(x: Tensor, f: Tensor, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """FIR-filter keeping the size (plus `padding`, negative = crop)."""
    x0, x1, y0, y1 = _parse_padding(padding)
    fh, fw = f.shape
    p = [x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, gain=gain)


def upsample2d(x: Tensor, f: Tensor, up: int = 2, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """Upsample by `up` with FIR filter f: the output is `up` times the input size (plus `padding`)."""
    x0, x1, y0, y1 = _parse_padding(padding)
    fh, fw = f.shape
    p = [x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=p, gain=gain * up * up)


def downsample2d(x: Tensor, f: Tensor, down: int = 2, padding: Padding = 0, gain: float = 1.0) -> Tensor:
    """Downsample by `down` with FIR filter f: the output is 1/down of the input size (plus `padding`)."""
    x0, x1, y0, y1 = _parse_padding(padding)
    fh, fw = f.shape
    p = [x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2, y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=p, gain=gain)


# --------------------------------------------------------------------------- bias + activation


def lrelu_gain_clamp_(y: Tensor, alpha: float, gain: float, clamp: float | None) -> Tensor:
    """In place, in the reference's bias_act order: leaky ReLU (slope alpha; 1 = linear), gain, clamp."""
    if alpha != 1.0:
        y = F.leaky_relu_(y, alpha) if alpha > 0 else F.relu_(y)
    if gain != 1.0:
        y.mul_(gain)
    if clamp is not None:
        y.clamp_(-clamp, clamp)
    return y


class _BiasLeakyReLU(torch.autograd.Function):
    """y = clamp(lrelu(x + b) * gain): one node that keeps only y for the backward pass.

    The backward is built from differentiable ops whose derivative through y is zero (the activation is
    piecewise linear), so double backward (R1) works.
    """

    @staticmethod
    def forward(ctx, x: Tensor, b: Tensor | None, alpha: float, gain: float, clamp: float | None) -> Tensor:
        y = x + b.reshape(1, -1, *([1] * (x.ndim - 2))).to(x.dtype) if b is not None else x.clone()
        y = lrelu_gain_clamp_(y, alpha, gain, clamp)
        ctx.save_for_backward(y)
        ctx.alpha, ctx.gain, ctx.clamp, ctx.has_bias = alpha, gain, clamp, b is not None
        # No gradient in is no gradient out (not zeros): a double backward (path length) that reaches y with
        # none would otherwise give the bias a zero gradient, and Adam steps a parameter with a zero gradient
        # (its moments decay, its step count grows) where it skips one with None, as the reference's does.
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor | None):
        if dy is None:
            return None, None, None, None, None
        (y,) = ctx.saved_tensors
        alpha, gain, clamp = ctx.alpha, ctx.gain, ctx.clamp
        if alpha == 1.0:
            dx = dy * gain
        elif alpha > 0:
            dx = torch.ops.aten.leaky_relu_backward(dy, y, alpha, True)
            if gain != 1.0:
                dx = dx * gain
        else:
            dx = torch.where(y > 0, dy * gain, torch.zeros((), dtype=dy.dtype, device=dy.device))
        if clamp is not None:
            dx = dx.masked_fill(y.abs() >= clamp, 0)
        db = None
        if ctx.has_bias and ctx.needs_input_grad[1]:
            db = dx.sum([d for d in range(dx.ndim) if d != 1])
        return dx, db, None, None, None


def bias_act(x: Tensor, b: Tensor | None = None, act: str = "linear", alpha: float | None = None,
             gain: float | None = None, clamp: float | None = None) -> Tensor:
    """Add bias b (per channel, dim 1), apply the activation, multiply by gain, clamp to +-clamp.

    gain defaults to the activation's (sqrt(2) for (l)relu); alpha to its slope (0.2 for lrelu).
    """
    slope, default_gain = ACTIVATIONS[act]
    alpha = float(slope if alpha is None else alpha) if act != "linear" else 1.0
    gain = float(default_gain if gain is None else gain)
    if act == "linear" and clamp is None:  # cheap: leave it to autograd
        if b is not None:
            x = x + b.reshape(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
        return x * gain if gain != 1.0 else x
    return _BiasLeakyReLU.apply(x, b, alpha, gain, None if clamp is None else float(clamp))


# --------------------------------------------------------------------------- convolutions


def conv2d_resample(x: Tensor, w: Tensor, f: Tensor | None = None, up: int = 1, down: int = 1,
                    padding: int = 0, groups: int = 1) -> Tensor:
    """2-D convolution (correlation) with optional 2x up- or downsampling through FIR filter f.

    Matches the reference's conv2d_resample as its layers call it (`flip_weight = (up == 1)`): the
    upsampling path is a stride-`up` transposed convolution with the unflipped weight followed by the
    filter; downsampling filters first, then runs a strided convolution (1x1 kernels: downsample, then
    convolve). Padding is with respect to the upsampled image.
    """
    assert not (up > 1 and down > 1), "either up or down"
    out_ch, in_per_group, kh, kw = w.shape
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    assert f is not None
    fh, fw = f.shape
    p = padding
    if down > 1:
        px0, px1 = p + (fw - down + 1) // 2, p + (fw - down) // 2
        py0, py1 = p + (fh - down + 1) // 2, p + (fh - down) // 2
        if kw == 1 and kh == 1:
            x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
            return F.conv2d(x, w, groups=groups)
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return F.conv2d(x, w, stride=down, groups=groups)

    px0, px1 = p + (fw + up - 1) // 2, p + (fw - up) // 2
    py0, py1 = p + (fh + up - 1) // 2, p + (fh - up) // 2
    if kw == 1 and kh == 1:
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)
    # Transposed conv wants [in, out/groups, kh, kw].
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_ch // groups, kh, kw)
    px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
    pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=[pyt, pxt], groups=groups)
    return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, noise: Tensor | None = None, up: int = 1,
                     padding: int = 0, resample_filter: Tensor | None = None, demodulate: bool = True,
                     fused: bool = True) -> Tensor:
    """StyleGAN2's modulated convolution: per-sample weights weight * style (input channels), optionally
    demodulated to unit output norm, then noise added.

    fused=True runs it as one grouped convolution over the batch (per-sample weights, the reference's
    inference path); fused=False scales the activations before and after one shared-weight convolution
    (the reference's training path). The results are equal up to float rounding.
    x: [N, I, H, W], weight: [O, I, k, k], styles: [N, I], noise: broadcastable to the output or None.
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape

    if demodulate and _runs_in_fp16(x):  # pre-normalize against fp16 overflow (as the reference)
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    dcoefs: Tensor = None  # type: ignore[assignment]  # only read where demodulate set it
    if demodulate:
        # sum_{i,k} (w_oik * s_ni)^2 = sum_i s_ni^2 * (sum_k w_oik^2): no [N, O, I, k, k] tensor needed.
        with _no_autocast(x):
            dcoefs = (styles.float().square() @ weight.float().square().sum([2, 3]).t() + 1e-8).rsqrt()  # [N, O]

    if not fused:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding)
        if demodulate and noise is not None:
            return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
        if demodulate:
            return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
        return x + noise.to(x.dtype) if noise is not None else x

    w = weight[None] * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if demodulate:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw).to(x.dtype)
    x = conv2d_resample(x, w, f=resample_filter, up=up, padding=padding, groups=n)
    x = x.reshape(n, -1, *x.shape[2:])
    return x + noise.to(x.dtype) if noise is not None else x


def _runs_in_fp16(x: Tensor) -> bool:
    """Whether convolutions on x run in float16 (x is, or autocast to float16 is on)."""
    dev = x.device.type
    if x.dtype == torch.float16:
        return True
    return dev in ("cpu", "cuda") and torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) == torch.float16


def _no_autocast(x: Tensor):
    dev = x.device.type
    return torch.autocast(device_type=dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()


def normalize_2nd_moment(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """Scale x to unit mean square along dim (the mapping network's input normalization)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable-parameter elements (what the reference's summary prints as 'Parameters')."""
    return sum(p.numel() for p in module.parameters())


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format
