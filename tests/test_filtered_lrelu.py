"""StyleGAN3's filtered leaky ReLU that keeps one byte per upsampled sample (models.filtered_lrelu.filtered_lrelu)
against its plain-autograd form (filtered_lrelu_reference, the oracle): forward, gradient and gradient of
gradient, on the layers of real StyleGAN3-T/R networks and on random shapes; and what it keeps for backward.

Tolerances: the forward runs the same ops in the same order as the oracle, so it is compared for equality. The
backward applies the transposed filters as other convolutions than autograd's (a strided correlation where
autograd runs a transposed convolution, then slices), so float32 sums of up to 24 taps per axis come in another
order: the gradients agree to a few float32 ulps of their largest value, checked at 1e-5 of it.
"""
from __future__ import annotations

import random

import pytest
import torch

from models.filtered_lrelu import filtered_lrelu, filtered_lrelu_reference
from models.stylegan3 import Generator, design_lowpass_filter, preset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FORMS = (filtered_lrelu_reference, filtered_lrelu)


def assert_near(actual, expected, what):
    """Within 1e-5 of the expected tensor's largest magnitude (see the module's docstring)."""
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def layer_cases(kind: str, resolution: int) -> list[tuple]:
    """(input shape, op arguments) of every synthesis layer of a real network (narrow channels: the shapes,
    filters, factors and paddings are the network's own). The clamp is lowered so some samples clip."""
    cfg = preset(resolution, kind, channel_base=512 if kind == "stylegan3-t" else 256, channel_max=4)
    torch.manual_seed(0)
    G = Generator(cfg)
    cases = []
    for name in G.synthesis.layer_names:
        L = getattr(G.synthesis, name)
        gain, slope = (1.0, 1.0) if L.is_torgb else (2 ** 0.5, 0.2)
        size = L.in_size + L.conv_kernel - 1  # what the layer's modulated convolution hands the op
        cases.append((f"{kind}-{resolution}-{name}", (2, L.out_channels, size, size),
                      (L.up_filter, L.down_filter, L.up_factor, L.down_factor, L.padding, gain, slope, 1.5)))
    return cases


def random_cases(n: int = 10) -> list[tuple]:
    rng = random.Random(1)
    cases = []
    for i in range(n):
        up, down = rng.choice([1, 2, 4]), rng.choice([1, 2, 4])
        fu = design_lowpass_filter(rng.choice([1, 4, 6, 12]) if up > 1 else 1, 0.2, 0.2, 1)
        taps = rng.choice([1, 5, 8]) if down > 1 else rng.choice([1, 3])
        radial = taps % 2 == 0 and rng.random() < 0.5  # a jinc filter has an even size (odd: 0/0 at its centre)
        fd = design_lowpass_filter(taps, 0.2, 0.2, 1, radial=radial)
        padding = [rng.randint(-2, 6) for _ in range(4)]
        size = rng.randint(6, 13)
        clamp = rng.choice([None, 0.8])
        slope = rng.choice([0.2, 1.0, 0.0])
        gain = rng.choice([1.0, 2 ** 0.5])
        cases.append((f"random-{i}", (rng.randint(1, 3), rng.randint(1, 4), size, size + rng.randint(0, 3)),
                      (fu, fd, up, down, padding, gain, slope, clamp)))
    return cases


CASES = layer_cases("stylegan3-t", 64) + layer_cases("stylegan3-r", 64) + layer_cases("stylegan3-t", 256)[3:6] \
    + random_cases()


def _call(form, x, b, args):
    fu, fd, up, down, padding, gain, slope, clamp = args
    return form(x, fu, fd, b, up, down, padding, gain, slope, clamp)


@pytest.mark.parametrize("name,shape,args", CASES, ids=[c[0] for c in CASES])
def test_forward_is_the_references_and_gradients_agree(name, shape, args):
    torch.manual_seed(hash(name) % 2 ** 31)
    x = torch.randn(shape, requires_grad=True)
    b = torch.randn(shape[1], requires_grad=True)
    (y0, y1) = (_call(form, x, b, args) for form in FORMS)
    assert torch.equal(y0, y1), f"{name}: forward differs from the reference"
    r = torch.randn_like(y0)
    g0 = torch.autograd.grad((y0 * r).sum(), [x, b])
    g1 = torch.autograd.grad((y1 * r).sum(), [x, b])
    assert_near(g1[0], g0[0], f"{name} dx")
    assert_near(g1[1], g0[1], f"{name} db")


def test_under_bf16_autocast_the_forward_and_gradient_dtypes_are_the_references():
    name, shape, args = CASES[5]
    x = torch.randn(shape, requires_grad=True)
    b = torch.randn(shape[1], requires_grad=True)
    outs = []
    for form in FORMS:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = _call(form, x, b, args)
        outs.append((y, torch.autograd.grad(y.float().square().sum(), [x, b])))
    (y0, (dx0, db0)), (y1, (dx1, db1)) = outs
    assert y1.dtype == y0.dtype == torch.bfloat16 and torch.equal(y0, y1)
    assert dx1.dtype == dx0.dtype == torch.float32 and db1.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: the two summation orders agree to a few bf16 ulps (2^-8 each).
    torch.testing.assert_close(dx1, dx0, rtol=0, atol=0.03 * dx0.abs().max().item())


def _two_layer_penalty(form, ws, bs, x, args):
    """A path-length-like penalty: the gradient of the output w.r.t. the input, through two ops with a
    channel mix before each, squared; its gradient w.r.t. the mixing weights runs through each op's backward.
    (The ops are piecewise linear: that gradient does not depend on the biases.)"""
    h = x
    for w, b in zip(ws, bs):
        h = _call(form, torch.einsum("oc,nchw->nohw", w, h), b, args)
    r = torch.randn(h.shape, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad((h * r).sum(), x, create_graph=True)
    return g.square().sum()


SECOND_ORDER = ["stylegan3-t-64-L1_36_4", "stylegan3-t-64-L4_52_4", "stylegan3-r-64-L5_52_8"]


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_gradient_of_gradient_agrees(name):
    """Path-length regularization differentiates through G twice: the op's backward is itself differentiable
    and gives the reference's second-order gradient (here through two layers of a real network's shape)."""
    _, shape, args = next(c for c in CASES if c[0] == name)
    torch.manual_seed(0)
    c = shape[1]
    x = torch.randn(shape, requires_grad=True)
    ws = [torch.randn(c, c, requires_grad=True) for _ in range(2)]
    bs = [torch.randn(c) for _ in range(2)]
    expected, actual = (torch.autograd.grad(_two_layer_penalty(form, ws, bs, x, args), ws) for form in FORMS)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert e.abs().max() > 0
        assert_near(a, e, f"{name} d penalty / d weight {i}")


def test_backward_is_differentiable_in_its_incoming_gradient():
    """gradgradcheck in float64 on a small up-2 / down-2 layer with clamping: the backward is linear in the
    incoming gradient, and its derivative is the same linear map (checked against finite differences)."""
    fu = design_lowpass_filter(12, 0.25, 0.3, 2).double()
    fd = design_lowpass_filter(8, 0.25, 0.3, 2, radial=True).double()
    x = torch.randn(1, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: filtered_lrelu(x, fu, fd, b, 2, 2, [6, 5, 6, 5], 2 ** 0.5, 0.2, 1.0)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_keeps_one_byte_per_upsampled_sample_for_backward():
    """What the op saves for its backward pass: a uint8 code of the upsampled map (and the two small filters),
    where the plain-autograd form keeps several float copies of the map."""
    name, shape, args = CASES[1]  # a StyleGAN3-T layer: upsample 2, downsample 2
    x = torch.randn(shape, requires_grad=True)
    b = torch.randn(shape[1], requires_grad=True)
    saved = {}
    for form in FORMS:
        kept: list[torch.Tensor] = []

        def keep(t, kept=kept):
            kept.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            _call(form, x, b, args)
        seen = {t.data_ptr(): t for t in kept if t.data_ptr() not in (x.data_ptr(), b.data_ptr())}
        saved[form.__name__] = sum(t.numel() * t.element_size() for t in seen.values())
    fu, fd, up = args[0], args[1], args[2]
    upsampled = shape[0] * shape[1] * (shape[2] * up + sum(args[4][:2]) - fu.shape[0] + 1) ** 2
    filters = 4 * (fu.numel() + fd.numel())
    assert saved["filtered_lrelu"] == upsampled + filters  # one byte per upsampled sample
    assert saved["filtered_lrelu_reference"] > 8 * saved["filtered_lrelu"]
