"""StyleGAN3's filtered leaky ReLU: bias, upsample with a low-pass FIR filter, leaky ReLU x gain (+ clamp),
low-pass and downsample, in plain PyTorch.

Two forms of the same op:
- `filtered_lrelu_reference`: the composition of plain ops, as the reference's non-CUDA `_filtered_lrelu_ref`
  (bias, upfirdn2d, bias_act, upfirdn2d). Autograd keeps every intermediate for the backward pass: the
  zero-stuffed, padded and upsampled maps, each up^2 times the layer's input. It is the oracle the other
  form is tested against.
- `filtered_lrelu`: one autograd node that runs the same ops in the same order (the same output, bit for bit)
  but keeps only what its backward needs: the upsampled map's sign and clamp pattern, one byte per sample
  (NVIDIA's CUDA kernel keeps the same information in two bits). The backward is the adjoint of the two
  linear filters around a per-sample gain, written in differentiable torch ops, so double backward (path-length
  regularization through G) works; the op being piecewise linear, its second derivative is zero a.e., as the
  reference's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.ops import lrelu_gain_clamp_

Tensor = torch.Tensor
Padding = tuple[int, int, int, int]


def upfirdn(x: Tensor, f: Tensor | None, up: int, down: int, pad: Padding, gain: float) -> Tensor:
    """The reference's upfirdn2d for a separable (1-D) or 2-D filter: zero-stuff by `up`, pad (negative =
    crop) [x0, x1, y0, y1], convolve (true convolution), keep every `down`-th sample."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0): x.shape[2] - max(-y1, 0), max(-x0, 0): x.shape[3] - max(-x1, 0)]
    if f is None:
        return (x * gain if gain != 1 else x)[:, :, ::down, ::down]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].expand(c, 1, *f.shape), stride=down, groups=c)
    fk = f[None, None].expand(c, 1, f.shape[0])
    x = F.conv2d(x, fk.unsqueeze(2), stride=(1, down), groups=c)     # along width
    return F.conv2d(x, fk.unsqueeze(3), stride=(down, 1), groups=c)  # along height


def upfirdn_adjoint(dy: Tensor, f: Tensor | None, up: int, down: int, pad: Padding, gain: float,
                    in_size: tuple[int, int]) -> Tensor:
    """The transpose of `upfirdn(., f, up, down, pad, gain)` on an input of size in_size = (h, w), applied to
    dy: upfirdn with up and down swapped, the filter flipped and the padding moved (NVIDIA's upfirdn2d
    gradient). Linear in dy and built of differentiable ops."""
    ih, iw = in_size
    oh, ow = dy.shape[2:]
    fh = fw = 1 if f is None else f.shape[0]
    if f is not None and f.ndim == 2:
        fw = f.shape[1]
    x0, _, y0, _ = pad
    p = (fw - x0 - 1, iw * up - ow * down + x0 - up + 1, fh - y0 - 1, ih * up - oh * down + y0 - up + 1)
    flipped = None if f is None else f.flip(list(range(f.ndim)))
    return upfirdn(dy, flipped, up=down, down=up, pad=p, gain=gain)


def filtered_lrelu_reference(x: Tensor, fu: Tensor | None, fd: Tensor | None, b: Tensor, up: int, down: int,
                             padding: list[int] | Padding, gain: float, slope: float,
                             clamp: float | None) -> Tensor:
    """Bias, upsample with fu, leaky ReLU x gain (+ clamp), downsample with fd: `_filtered_lrelu_ref`."""
    from models import ops

    x = x + b.reshape(1, -1, 1, 1).to(x.dtype)
    x = upfirdn(x, fu, up, 1, _pad4(padding), gain=up ** 2)
    x = ops.bias_act(x, None, act="lrelu", alpha=slope, gain=gain, clamp=clamp)
    return upfirdn(x, fd, 1, down, (0, 0, 0, 0), gain=1.0)


# Codes of the upsampled map's samples, kept for the backward pass (one byte each).
_CLAMPED, _NEGATIVE, _POSITIVE = 0, 1, 2


class _FilteredLReLU(torch.autograd.Function):
    """filtered_lrelu_reference's forward, keeping a one-byte code per upsampled sample instead of the maps."""

    @staticmethod
    def forward(ctx, x: Tensor, fu: Tensor | None, fd: Tensor | None, b: Tensor, up: int, down: int,
                padding: Padding, gain: float, slope: float, clamp: float | None) -> Tensor:
        y = x + b.reshape(1, -1, 1, 1).to(x.dtype)
        y = upfirdn(y, fu, up, 1, padding, gain=up ** 2)
        y = lrelu_gain_clamp_(y, slope, gain, clamp)  # as ops.bias_act: the same bits as the reference
        # Which slope each sample took, and whether the clamp cut its gradient: what the reference's bias_act
        # backward reads from its saved output (y > 0; |y| >= clamp).
        code = None
        if slope != 1.0 or clamp is not None:
            code = (y > 0).to(torch.uint8) + _NEGATIVE
            if clamp is not None:
                code.masked_fill_(y.abs() >= clamp, _CLAMPED)
        ctx.save_for_backward(code, fu, fd)
        ctx.shapes = (tuple(x.shape[2:]), tuple(y.shape[2:]))
        ctx.args = (up, down, padding, gain, slope, clamp)
        ctx.dtypes = (x.dtype, b.dtype)
        return upfirdn(y, fd, 1, down, (0, 0, 0, 0), gain=1.0)

    @staticmethod
    def backward(ctx, dy: Tensor):
        code, fu, fd = ctx.saved_tensors
        up, down, padding, gain, slope, clamp = ctx.args
        in_size, tmp_size = ctx.shapes
        x_dtype, b_dtype = ctx.dtypes
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            raise RuntimeError("filtered_lrelu has no gradient for its filters (they are fixed buffers)")
        g = upfirdn_adjoint(dy, fd, 1, down, (0, 0, 0, 0), 1.0, tmp_size)
        # bias_act's backward, in its order: slope where the sample was not positive, gain, zero where clamped.
        if slope != 1.0:
            g = torch.where(code == _POSITIVE, g, g * slope)
        if gain != 1.0:
            g = g * gain
        if clamp is not None:
            g = g.masked_fill(code == _CLAMPED, 0)
        dx = upfirdn_adjoint(g, fu, up, 1, padding, float(up ** 2), in_size).to(x_dtype)
        db = dx.sum([0, 2, 3]).to(b_dtype) if ctx.needs_input_grad[3] else None
        return dx, None, None, db, None, None, None, None, None, None


def filtered_lrelu(x: Tensor, fu: Tensor | None, fd: Tensor | None, b: Tensor, up: int, down: int,
                   padding: list[int] | Padding, gain: float, slope: float, clamp: float | None) -> Tensor:
    """filtered_lrelu_reference's result, keeping one byte per upsampled sample for the backward pass."""
    return _FilteredLReLU.apply(x, fu, fd, b, up, down, _pad4(padding), float(gain), float(slope),
                                None if clamp is None else float(clamp))


def _pad4(padding: list[int] | Padding) -> Padding:
    x0, x1, y0, y1 = (int(p) for p in padding)
    return x0, x1, y0, y1
