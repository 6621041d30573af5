"""StyleGAN2 networks (models/stylegan2.py) and their pure-PyTorch ops (models/ops.py), on CPU.

Small configs keep these fast; the 512x512 parameter counts are taken on the meta device (no memory).
"""
from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
import torch.nn.functional as F

from models import ops
from models.ops import count_parameters
from models.stylegan2 import (
    Discriminator, Generator, MinibatchStd, StyleGAN2Config, TrainDefaults, preset,
)

# The seed blog's StyleGAN2-ADA at 512x512 (stylegan2-ada-pytorch prints these as 'Parameters').
BLOG_G_PARAMS = 28_700_647
BLOG_D_PARAMS = 28_982_849


# Tiny nets: thread start-up costs more than it saves.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(resolution: int = 16, **kw) -> StyleGAN2Config:
    base = dict(resolution=resolution, channel_base=256, channel_max=32, z_dim=16, w_dim=16, mapping_layers=2,
                mbstd_group=2)
    return StyleGAN2Config(**(base | kw))


def nets(cfg: StyleGAN2Config, seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    return Generator(cfg), Discriminator(cfg)


# --------------------------------------------------------------------------- presets and sizes


def test_auto_preset_at_512_has_the_blogs_parameter_counts():
    cfg, train = preset(512)
    with torch.device("meta"):
        g, d = count_parameters(Generator(cfg)), count_parameters(Discriminator(cfg))
    print(f"\nStyleGAN2 preset(512) 'auto': G {g:,} (blog {BLOG_G_PARAMS:,})  D {d:,} (blog {BLOG_D_PARAMS:,})")
    assert (g, d) == (BLOG_G_PARAMS, BLOG_D_PARAMS)
    assert (cfg.mapping_layers, cfg.channel_base, cfg.channel_max) == (2, 32768, 512)
    # Paper config F differs only by 6 more 512x512 mapping layers (weights + biases).
    cfg_f, _ = preset(512, kind="stylegan2")
    with torch.device("meta"):
        assert count_parameters(Generator(cfg_f)) == BLOG_G_PARAMS + 6 * (512 * 512 + 512)
        assert count_parameters(Discriminator(cfg_f)) == BLOG_D_PARAMS


@pytest.mark.parametrize("res, gpus, mb, mbstd, fmaps, lr, gamma, ema", [
    (64, 1, 32, 4, 0.5, 0.0025, 0.0256, 10.0),
    (256, 1, 16, 4, 0.5, 0.0025, 0.8192, 5.0),
    (512, 1, 8, 4, 1.0, 0.0025, 6.5536, 2.5),
    (1024, 1, 4, 4, 1.0, 0.002, 52.4288, 1.25),
    (256, 8, 64, 4, 0.5, 0.0025, 0.2048, 20.0),
    (1024, 8, 32, 4, 1.0, 0.002, 6.5536, 10.0),
])
def test_auto_preset_follows_the_reference_formulas(res, gpus, mb, mbstd, fmaps, lr, gamma, ema):
    cfg, t = preset(res, gpus=gpus)
    # train.py: mb = max(min(gpus * min(4096 // res, 32), 64), gpus), mbstd = min(mb // gpus, 4), ...
    assert t.minibatch == mb == max(min(gpus * min(4096 // res, 32), 64), gpus)
    assert t.mbstd_group == cfg.mbstd_group == mbstd == min(mb // gpus, 4)
    assert cfg.channel_base == int(fmaps * 32768) and cfg.channel_max == 512
    assert t.lr == lr
    assert t.r1_gamma == pytest.approx(gamma) == 0.0002 * res ** 2 / mb
    assert t.ema_kimg == pytest.approx(ema) == mb * 10 / 32
    assert (t.ema_rampup, cfg.mapping_layers, t.ref_gpus, t.batch_gpu) == (0.05, 2, gpus, mb // gpus)
    assert (t.betas, t.d_reg_interval, t.g_reg_interval, t.ada_target) == ((0.0, 0.99), 16, 4, 0.6)
    assert cfg.resolution == res and cfg.conv_clamp == 256


def test_fixed_presets_are_the_reference_specs():
    cfg, t = preset(512, kind="stylegan2")  # paper config F
    assert (cfg.mapping_layers, cfg.channel_base, t.lr, t.r1_gamma, t.ema_kimg, t.minibatch, t.mbstd_group) == \
        (8, 32768, 0.002, 10, 10, 32, 4)
    assert t.ema_rampup is None and t.batch_gpu == 4
    cfg, t = preset(512, kind="paper512")
    assert (cfg.mapping_layers, cfg.channel_base, t.lr, t.r1_gamma, t.ema_kimg, t.minibatch, t.mbstd_group) == \
        (8, 32768, 0.0025, 0.5, 20, 64, 8)
    cfg, t = preset(32, kind="cifar")
    assert cfg.d_architecture == "orig" and t.pl_weight == 0 and t.style_mixing_prob == 0
    with pytest.raises(ValueError, match="unknown preset"):
        preset(256, kind="nope")
    with pytest.raises(ValueError, match="power of two"):
        preset(300)


@pytest.mark.parametrize("res", [8, 16, 32, 64])
def test_shapes(res):
    cfg = tiny(res)
    G, D = nets(cfg)
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    z = torch.randn(4, cfg.z_dim)
    ws = G.mapping(z)
    assert ws.shape == (4, G.num_ws, cfg.w_dim)
    img = G.synthesis(ws)
    assert img.shape == (4, 3, res, res) and img.dtype == torch.float32
    assert D(img).shape == (4, 1)
    assert G(z, noise_mode="none").shape == (4, 3, res, res)


def test_grayscale_and_odd_batches():
    cfg = tiny(16, channels=1, mbstd_group=4)
    G, D = nets(cfg)
    assert D(G(torch.randn(12, cfg.z_dim))).shape == (12, 1)
    assert D(torch.randn(2, 1, 16, 16)).shape == (2, 1)  # group shrinks to the batch
    with pytest.raises(ValueError, match="multiple"):
        D(torch.randn(6, 1, 16, 16))
    with pytest.raises(ValueError, match="images must be"):
        D(torch.randn(2, 3, 16, 16))


# --------------------------------------------------------------------------- behaviour


def test_same_seed_same_image_with_const_noise():
    cfg = tiny(16)
    G, _ = nets(cfg)
    with torch.no_grad():
        for p in G.parameters():
            if p.ndim == 0:  # noise strengths start at 0: make noise visible
                p.fill_(0.5)
    G.eval()
    z = torch.randn(3, cfg.z_dim, generator=torch.Generator().manual_seed(7))
    a = G(z, noise_mode="const")
    b = G(z.clone(), noise_mode="const")
    assert torch.equal(a, b)
    assert not torch.allclose(G(z, noise_mode="random"), a)  # the noise matters
    assert not torch.allclose(G(z, noise_mode="none"), a)
    torch.manual_seed(3)
    r1 = G(z, noise_mode="random")
    torch.manual_seed(3)
    assert torch.equal(G(z, noise_mode="random"), r1)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="loud")


def test_truncation_psi_zero_gives_the_average_w_for_every_sample():
    cfg = tiny(16)
    G, _ = nets(cfg)
    G.eval()
    G.mapping.w_avg.normal_()
    z = torch.randn(4, cfg.z_dim)
    ws = G.mapping(z, truncation_psi=0.0)
    assert torch.allclose(ws, G.mapping.w_avg.expand_as(ws))
    img = G(z, truncation_psi=0.0, noise_mode="const")
    assert torch.allclose(img, img[:1].expand_as(img), atol=1e-5)
    # psi between: w moves linearly towards w_avg; a cutoff truncates only the first ws.
    w1 = G.mapping(z)
    assert torch.allclose(G.mapping(z, 0.5), G.mapping.w_avg + 0.5 * (w1 - G.mapping.w_avg), atol=1e-6)
    cut = G.mapping(z, 0.0, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], G.mapping.w_avg.expand(4, 2, -1)) and torch.equal(cut[:, 2:], w1[:, 2:])


def test_w_avg_is_tracked_in_training_only():
    cfg = tiny(8)
    G, _ = nets(cfg)
    z = torch.randn(8, cfg.z_dim)
    G.eval()
    G.mapping(z)
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    G.train()
    w = G.mapping(z)[:, 0]
    assert torch.allclose(G.mapping.w_avg, (1 - 0.995) * w.mean(0), atol=1e-7)
    before = G.mapping.w_avg.clone()
    G.mapping(z, update_w_avg=False)
    assert torch.equal(G.mapping.w_avg, before)
    G.eval()
    G(z, update_w_avg=True)
    assert not torch.equal(G.mapping.w_avg, before)
    assert "mapping.w_avg" in G.state_dict()


def test_gradients_reach_every_parameter_and_r1_double_backward_works():
    cfg = tiny(16)
    G, D = nets(cfg)
    G.train(), D.train()
    z = torch.randn(4, cfg.z_dim)
    F.softplus(-D(G(z))).mean().backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # R1: gradient of D w.r.t. reals, then backward through it (second order).
    D.zero_grad()
    real = torch.randn(4, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
    grad.square().sum().backward()
    assert D.b16.conv0.weight.grad.abs().sum() > 0 and D.b4.fc.weight.grad.abs().sum() > 0


def test_matches_stylegan2_ada_pytorch_from_the_same_seed():
    """Values produced by the reference (NVlabs/stylegan2-ada-pytorch training/networks.py, CPU, fp32) for
    this config: seed 0, then G and D built in that order; noise strengths 0.5, w_avg 0.1, z from seed 1,
    eval, psi 0.7, const noise. Same initialization order means the same weights."""
    cfg = tiny(16, conv_clamp=256.0)
    G, D = nets(cfg, seed=0)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if "noise_strength" in name:
                p.fill_(0.5)
        G.mapping.w_avg.fill_(0.1)
    G.eval(), D.eval()
    torch.manual_seed(1)
    z = torch.randn(4, 16)
    with torch.no_grad():
        img = G(z, truncation_psi=0.7, noise_mode="const")
        logits = D(img)
    expect = torch.tensor
    assert torch.allclose(img[:, 0, 5, 7], expect([-2.37372, -3.95853, -1.95318, -2.90648]), atol=2e-4)
    assert torch.allclose(img.mean(dim=[1, 2, 3]), expect([-0.63707, -1.75151, -1.16345, -2.33405]), atol=2e-4)
    assert torch.allclose(logits.flatten(), expect([-0.14559, -0.73693, -0.47889, -0.98608]), atol=2e-4)


def test_fused_split_and_channels_last_agree():
    cfg = tiny(16)
    G, D = nets(cfg)
    with torch.no_grad():
        for p in G.parameters():
            if p.ndim == 0:
                p.fill_(0.3)
    z = torch.randn(4, cfg.z_dim)
    img = torch.randn(4, 3, 16, 16)
    ref = G(z, noise_mode="const", fused_modconv=False)
    assert torch.allclose(G(z, noise_mode="const", fused_modconv=True), ref, atol=1e-4)
    G_cl, D_cl = nets(dataclasses.replace(cfg, channels_last=True))
    G_cl.load_state_dict(G.state_dict())
    D_cl.load_state_dict(D.state_dict())
    assert torch.allclose(G_cl(z, noise_mode="const", fused_modconv=False), ref, atol=1e-4)
    assert torch.allclose(D_cl(img), D(img), atol=1e-5)


def test_autocast_keeps_low_resolutions_mapping_and_head_in_fp32():
    cfg = tiny(32, num_fp16_res=2)  # fp16 from 16x16 up
    G, D = nets(cfg)
    assert [b.use_fp16 for b in (G.synthesis.b8, G.synthesis.b16, G.synthesis.b32)] == [False, True, True]
    z = torch.randn(4, cfg.z_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z)
        logits = D(img)
    assert img.dtype == logits.dtype == torch.float32
    logits.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in G.parameters())
    # With no half-precision blocks, autocast changes nothing.
    G32, D32 = nets(dataclasses.replace(cfg, num_fp16_res=0))
    G32.eval()
    want, want_logits = G32(z, noise_mode="const"), D32(img)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_logits = G32(z, noise_mode="const"), D32(img)
    assert torch.equal(got, want) and torch.equal(got_logits, want_logits)


def test_state_dict_and_config_round_trip_with_weights_only():
    cfg = tiny(8)
    G, D = nets(cfg)
    buf = io.BytesIO()
    torch.save({"G": G.state_dict(), "D": D.state_dict(), "cfg": cfg.to_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    cfg2 = StyleGAN2Config.from_dict(state["cfg"])
    assert cfg2 == cfg
    G2, D2 = nets(cfg2, seed=1)
    G2.load_state_dict(state["G"])
    D2.load_state_dict(state["D"])
    z = torch.randn(2, cfg.z_dim)
    assert torch.equal(G2(z, noise_mode="const"), G(z, noise_mode="const"))
    assert isinstance(preset(64)[1], TrainDefaults)


def test_minibatch_std_matches_its_definition():
    x = torch.randn(8, 6, 4, 4)
    y = MinibatchStd(group_size=4)(x)
    assert y.shape == (8, 7, 4, 4)
    for s in range(8):  # sample s is in group {s % 2, s % 2 + 2, ...} (strided, as the reference)
        group = x[s % 2::2]
        assert torch.allclose(y[s, 6], group.std(dim=0, unbiased=False).mean().expand(4, 4), atol=1e-5)


# --------------------------------------------------------------------------- ops


def upfirdn2d_definition(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0):
    """Zero-stuff, pad/crop, convolve with f, keep every down-th sample: the op's definition, slowly."""
    n, c, h, w = x.shape
    x0, x1, y0, y1 = padding
    z = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    z = z[:, :, max(-y0, 0): z.shape[2] - max(-y1, 0), max(-x0, 0): z.shape[3] - max(-x1, 0)]
    k = (f * gain).flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(z, k, groups=c)[:, :, ::down, ::down]


@pytest.mark.parametrize("up, down, padding", [
    (1, 1, (1, 1, 1, 1)), (1, 1, (2, 1, 0, 3)), (1, 2, (1, 1, 1, 1)), (1, 2, (2, 2, 2, 2)),
    (2, 1, (2, 1, 2, 1)), (2, 1, (1, 1, 1, 1)), (2, 1, (3, 0, 2, 1)), (1, 1, (-1, 2, 0, -1)),
])
def test_upfirdn2d_matches_its_definition(up, down, padding):
    f = ops.setup_filter([1, 3, 3, 1])
    f_asym = ops.setup_filter(torch.arange(1.0, 13.0).reshape(3, 4))
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    for filt in (f, f_asym):
        got = ops.upfirdn2d(x, filt, up=up, down=down, padding=padding, gain=up * up)
        want = upfirdn2d_definition(x, filt, up, down, padding, gain=up * up)
        assert got.shape == want.shape and torch.allclose(got, want)


def test_resampling_sizes_and_dc_gain():
    f = ops.setup_filter()
    x = torch.ones(1, 2, 8, 8)
    up, down, same = ops.upsample2d(x, f), ops.downsample2d(x, f), ops.filter2d(x, f)
    assert up.shape[-1] == 16 and down.shape[-1] == 4 and same.shape[-1] == 8
    for y in (up, down, same):  # a constant image stays constant away from the zero-padded border
        assert torch.allclose(y[..., 2:-2, 2:-2], torch.ones(()))


@pytest.mark.parametrize("up, down, k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 2, 1), (2, 1, 1)])
def test_conv2d_resample_is_filter_then_conv(up, down, k):
    """Up: zero-stuff + filter (gain 4), then convolve (the weight flipped, as the reference's transposed
    path does); down: filter, then correlate and keep every 2nd sample."""
    f = ops.setup_filter()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4, k, k, dtype=torch.float64)
    p = k // 2
    got = ops.conv2d_resample(x, w, f, up=up, down=down, padding=p)
    if up > 1:
        want = F.conv2d(upfirdn2d_definition(x, f, up=2, padding=(p + 2, p + 1) * 2, gain=4), w.flip([2, 3]))
    elif down > 1:
        want = F.conv2d(upfirdn2d_definition(x, f, padding=(p + 1,) * 4), w)[:, :, ::2, ::2]
    else:
        want = F.conv2d(x, w, padding=p)
    assert got.shape == want.shape and torch.allclose(got, want)


@pytest.mark.parametrize("act, clamp", [("lrelu", None), ("lrelu", 0.5), ("relu", None), ("linear", 0.7)])
def test_bias_act_values_and_second_order_gradients(act, clamp):
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    slope, gain = {"lrelu": (0.2, math.sqrt(2)), "relu": (0.0, math.sqrt(2)), "linear": (1.0, 1.0)}[act]
    y = x + b[None, :, None, None]
    want = torch.where(y > 0, y, slope * y) * gain
    if clamp is not None:
        want = want.clamp(-clamp, clamp)
    assert torch.allclose(ops.bias_act(x, b, act=act, clamp=clamp), want)
    fn = lambda x, b: ops.bias_act(x, b, act=act, clamp=clamp)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


def test_modulated_conv_definition_and_demodulation():
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    weight = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    styles = torch.rand(3, 4, dtype=torch.float64) + 0.5
    f = ops.setup_filter().to(torch.float64)
    for up in (1, 2):
        per_sample = []
        for i in range(3):  # definition: each sample's own weight, demodulated per output channel
            w = weight * styles[i][None, :, None, None]
            w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
            per_sample.append(ops.conv2d_resample(x[i:i + 1], w, f, up=up, padding=1))
        want = torch.cat(per_sample)
        for fused in (True, False):
            got = ops.modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=f, fused=fused)
            assert torch.allclose(got, want)
