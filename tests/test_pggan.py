"""PGGAN networks (models/pggan.py) on CPU: growth stages, fade-in, the paper's layers and sizes.

Small configs keep these fast; the paper-size parameter counts are taken on the meta device (no memory).
"""
from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from models.generate import synthesize
from models.ops import count_parameters
from models.pggan import (
    FUSED_MIN_RES, PRESETS, Discriminator, EqualConv2d, EqualLinear, Generator, GrowthSchedule, MinibatchStd, PGGANConfig,
    PixelNorm, fade_reals, paper_minibatch, preset, resolution_stage,
    stage_resolution,
)

# The paper's Table 2 (CelebA-HQ, 1024x1024): "Total trainable parameters 23.1M" for G and for D.
PAPER_PARAMS = 23.1e6


# Tiny nets: thread start-up costs more than it saves.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(resolution: int = 64, **kw) -> PGGANConfig:
    return PGGANConfig(**(dict(resolution=resolution, channel_base=256, channel_max=32, z_dim=16) | kw))


def nets(cfg: PGGANConfig, seed: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(seed)
    return Generator(cfg), Discriminator(cfg)


# --------------------------------------------------------------------------- sizes


def test_stages_and_channels_follow_the_paper():
    cfg = PGGANConfig(resolution=1024)
    assert (cfg.num_stages, cfg.max_stage) == (9, 8)
    assert [stage_resolution(s) for s in range(9)] == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert [resolution_stage(stage_resolution(s)) for s in range(9)] == list(range(9))
    # Table 2: 512 feature maps up to 32x32, then halving down to 16 at 1024x1024.
    assert {r: cfg.channels_at(r) for r in (4, 8, 16, 32, 64, 128, 256, 512, 1024)} == \
        {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    G = Generator(tiny(64))
    assert (G.max_stage, G.num_stages, G.stage_resolution(3)) == (4, 5, 32)
    with pytest.raises(ValueError, match="power of two"):
        PGGANConfig(resolution=96)
    with pytest.raises(ValueError, match="stage"):
        G(torch.randn(2, 16), stage=5)


def _table2_counts() -> tuple[int, int]:
    """Parameter counts written out from the paper's Table 2 layer list (weights + biases), plus the ToRGB
    and FromRGB layers of the lower resolutions, which training keeps (the table shows the final ones)."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    conv = lambda cin, cout, k: cin * cout * k * k + cout  # noqa: E731
    g = conv(512, 512, 4) + conv(512, 512, 3)  # 'Conv 4x4' on the 1x1 latent, 'Conv 3x3'
    for r in (8, 16, 32, 64, 128, 256, 512, 1024):
        g += conv(ch[r // 2], ch[r], 3) + conv(ch[r], ch[r], 3)
    g_rgb = sum(conv(ch[r], 3, 1) for r in ch)
    d = conv(513, 512, 3) + conv(512, 512, 4) + conv(512, 1, 1)  # mbstd + 'Conv 3x3', 'Conv 4x4', 'FC'
    for r in (8, 16, 32, 64, 128, 256, 512, 1024):
        d += conv(ch[r], ch[r], 3) + conv(ch[r], ch[r // 2], 3)
    d_rgb = sum(conv(3, ch[r], 1) for r in ch)
    return g + g_rgb, d + d_rgb


def test_parameter_counts_per_preset_and_the_papers_celebahq_network():
    print()
    for kind in PRESETS:
        for res in (64, 128, 256, 512, 1024):
            cfg, _ = preset(res, kind)
            with torch.device("meta"):
                g, d = count_parameters(Generator(cfg)), count_parameters(Discriminator(cfg))
            print(f"PGGAN preset({res}, {kind!r}): G {g:,}  D {d:,}")
    cfg, train = preset(1024)
    with torch.device("meta"):
        G, D = Generator(cfg), Discriminator(cfg)
    g, d = count_parameters(G), count_parameters(D)
    rgb_g = sum(count_parameters(m) for m in G.to_rgb[:-1])
    rgb_d = sum(count_parameters(m) for m in D.from_rgb[:-1])
    print(f"PGGAN CelebA-HQ 1024: G {g:,} ({g - rgb_g:,} without the 8 lower-resolution ToRGBs), "
          f"D {d:,} ({d - rgb_d:,} without the lower FromRGBs); paper Table 2: 23.1M each")
    assert (g, d) == _table2_counts() == (23_079_115, 23_087_249)
    assert round(g / 1e6, 1) == round(d / 1e6, 1) == round((g - rgb_g) / 1e6, 1) == PAPER_PARAMS / 1e6
    assert abs(g - PAPER_PARAMS) / PAPER_PARAMS < 0.002 and abs(d - PAPER_PARAMS) / PAPER_PARAMS < 0.002
    assert (train.lr, train.betas, train.loss, train.gp_gamma, train.drift) == (0.001, (0.0, 0.99), "wgan", 10, 0.001)
    assert [paper_minibatch(r) for r in (4, 128, 256, 512, 1024)] == [16, 16, 14, 6, 3]
    assert 0.5 ** (16 / (1000 * train.ema_kimg(16))) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="unknown preset"):
        preset(256, "nope")


# --------------------------------------------------------------------------- growth and fade-in


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_shapes_per_stage(alpha):
    G, D = nets(tiny(64))
    z = torch.randn(4, 16)
    for stage in range(G.num_stages):
        img = G(z, stage, alpha)
        r = 4 * 2 ** stage
        assert img.shape == (4, 3, r, r) and img.dtype == torch.float32
        assert D(img, stage, alpha).shape == (4, 1)
        assert D(img).shape == (4, 1)  # the stage follows from the image size
    assert G(z).shape == (4, 3, 64, 64)  # default: the final stage
    with pytest.raises(ValueError, match="must be"):
        D(torch.randn(4, 3, 32, 32), stage=4)


def test_fade_in_starts_from_the_previous_stage_and_ends_at_the_new_one():
    G, D = nets(tiny(64))
    z = torch.randn(4, 16)
    with torch.no_grad():
        for stage in range(1, G.num_stages):
            prev = G(z, stage - 1, 1.0)
            start, mid, end = (G(z, stage, a) for a in (0.0, 0.5, 1.0))
            torch.testing.assert_close(start, F.interpolate(prev, scale_factor=2, mode="nearest"), rtol=0, atol=1e-6)
            torch.testing.assert_close(mid, (start + end) / 2, rtol=0, atol=1e-5)
            assert not torch.allclose(start, end)
            x = torch.randn(4, 3, 4 * 2 ** stage, 4 * 2 ** stage)
            torch.testing.assert_close(D(x, stage, 0.0), D(F.avg_pool2d(x, 2), stage - 1, 1.0), rtol=0, atol=1e-5)
            torch.testing.assert_close(D(x, stage, -3.0), D(x, stage, 0.0))  # alpha is clipped to [0, 1]


def test_growth_schedule_and_fading_reals():
    sched = GrowthSchedule(max_stage=4, stabilize_kimg=2, fade_kimg=4)
    assert sched.at(0) == (0, 1.0) and sched.at(1999) == (0, 1.0)
    assert sched.at(2000) == (1, 0.0) and sched.at(4000) == (1, 0.5) and sched.at(6000) == (1, 1.0)
    assert sched.at(8000) == (2, 0.0) and sched.at(14000) == (3, 0.0) and sched.at(20000) == (4, 0.0)
    assert sched.at(sched.kimg_to_full_resolution() * 1000) == (4, 1.0) == sched.at(10 ** 9)
    assert GrowthSchedule(max_stage=0).at(10 ** 6) == (0, 1.0)

    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(fade_reals(x, 2), F.avg_pool2d(x, 4))
    torch.testing.assert_close(fade_reals(x, 4, 0.0), F.interpolate(F.avg_pool2d(x, 2), scale_factor=2))
    torch.testing.assert_close(fade_reals(x, 4, 0.25), torch.lerp(fade_reals(x, 4, 0.0), x, 0.25))
    assert fade_reals(x, 0, 0.0).shape == (2, 3, 4, 4)


# --------------------------------------------------------------------------- layers


def test_equalized_learning_rate_stores_unit_normal_weights_scaled_by_he_constant():
    torch.manual_seed(0)
    cfg = tiny(64, channel_base=1024, channel_max=128)
    G, D = Generator(cfg), Discriminator(cfg)
    layers = [m for net in (G, D) for m in net.modules() if isinstance(m, (EqualConv2d, EqualLinear))]
    assert len(layers) == (2 + 2 * 4 + 5) + (3 + 2 * 4 + 5)  # G: 4x4 head, blocks, ToRGBs; D: head, blocks, FromRGBs
    for m in layers:
        w = m.weight
        assert m.fan_in == w[0].numel()
        assert m.scale == pytest.approx(m.gain / math.sqrt(m.fan_in))
        if w.numel() >= 10_000:
            assert abs(w.std().item() - 1) < 0.05 and abs(w.mean().item()) < 0.05
        if m.bias is not None:
            assert not m.bias.any()
    gains = {m.gain for m in layers}
    assert gains == {math.sqrt(2), 1.0, math.sqrt(2) / 4}
    # Hidden layers use He's sqrt(2 / fan_in); ToRGB and D's output are linear (gain 1); G's first dense
    # layer is the paper's 4x4 'conv' on a 1x1 input, sqrt(2) / 4 / sqrt(z_dim) = sqrt(2 / (16 * z_dim)).
    assert G.blocks[1].conv0.scale == pytest.approx(math.sqrt(2 / (cfg.channels_at(4) * 9)))
    assert G.to_rgb[4].conv.scale == pytest.approx(1 / math.sqrt(cfg.channels_at(64)))
    assert G.blocks[0].dense.scale == pytest.approx(math.sqrt(2 / (16 * cfg.z_dim)))
    assert D.blocks[0].out.scale == pytest.approx(1 / math.sqrt(128))
    # The runtime scale is what the convolution sees.
    conv = G.blocks[0].conv
    x = torch.randn(2, conv.weight.shape[1], 4, 4)
    torch.testing.assert_close(conv(x), F.leaky_relu(F.conv2d(x, conv.weight * conv.scale, padding=1), 0.2))


def test_pixel_norm_and_latent_normalization():
    x = torch.randn(3, 7, 5, 5) * 10
    y = PixelNorm()(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(3, 5, 5))
    G, _ = nets(tiny(8))
    z = torch.randn(2, 16)
    torch.testing.assert_close(G(z * 5), G(z), rtol=1e-5, atol=1e-5)  # z is pixel-normalized first


def test_minibatch_std_adds_one_channel_matching_its_definition():
    x = torch.randn(8, 5, 4, 4)
    y = MinibatchStd(group_size=4)(x)
    assert y.shape == (8, 6, 4, 4)
    torch.testing.assert_close(y[:, :5], x)
    # Reference grouping: x.reshape(G, M, ...), so group m holds samples m, m + M, ... (M = N // G = 2).
    for m in range(2):
        group = x[m::2]
        expected = group.std(dim=0, unbiased=False).mean()
        torch.testing.assert_close(y[m::2, 5], expected.expand(4, 4, 4), rtol=1e-5, atol=1e-5)
    same = MinibatchStd(4)(x[:1].expand(4, -1, -1, -1))
    assert same[:, 5].abs().max() < 1e-3  # identical samples: no spread
    assert MinibatchStd(4)(x[:2]).shape == (2, 6, 4, 4)  # group clamped to the batch
    with pytest.raises(ValueError, match="multiple"):
        MinibatchStd(4)(x[:6])
    _, D = nets(tiny(8, mbstd_group=0))
    assert D.blocks[0].conv.weight.shape[1] == 32  # no extra channel without the layer


def test_fused_and_separate_resampling_and_channels_last_agree():
    G, D = nets(tiny(64))
    z = torch.randn(4, 16)
    ref_img = G(z, 4, 0.5)
    ref_score = D(ref_img, 4, 0.5)
    for kw in (dict(fused_scale=False), dict(channels_last=True), dict(fused_scale=False, channels_last=True)):
        G2, D2 = nets(tiny(64, **kw), seed=1)
        G2.load_state_dict(G.state_dict()), D2.load_state_dict(D.state_dict())
        torch.testing.assert_close(G2(z, 4, 0.5), ref_img, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(D2(ref_img, 4, 0.5), ref_score, rtol=1e-4, atol=1e-4)
    # The fused 'up' conv is nearest upsampling then the 3x3 conv; the fused 'down' conv is conv then pool
    # (both fused from FUSED_MIN_RES up; the small ones run separately).
    for size in (4, FUSED_MIN_RES // 2, FUSED_MIN_RES, 2 * FUSED_MIN_RES):
        up, down = EqualConv2d(5, 6, 3, resample="up"), EqualConv2d(5, 6, 3, resample="down")
        torch.nn.init.normal_(up.bias), torch.nn.init.normal_(down.bias)
        x = torch.randn(2, 5, size, size)
        w_up, w_down = up.weight * up.scale, down.weight * down.scale
        torch.testing.assert_close(up(x), F.conv2d(F.interpolate(x, scale_factor=2), w_up, up.bias, padding=1))
        torch.testing.assert_close(down(x), F.avg_pool2d(F.conv2d(x, w_down, down.bias, padding=1), 2))


# --------------------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("stage, alpha", [(0, 1.0), (2, 0.5), (4, 0.5), (4, 1.0)])
def test_gradients_reach_exactly_the_parameters_used_at_a_stage(stage, alpha):
    G, D = nets(tiny(64))
    img = G(torch.randn(4, 16), stage, alpha)
    D(img, stage, alpha).sum().backward()
    fading = stage > 0 and alpha < 1
    used_g = {f"blocks.{s}." for s in range(stage + 1)} | {f"to_rgb.{stage}."}
    used_d = {f"blocks.{s}." for s in range(stage + 1)} | {f"from_rgb.{stage}."}
    if fading:
        used_g.add(f"to_rgb.{stage - 1}.")
        used_d.add(f"from_rgb.{stage - 1}.")
    for net, used in ((G, used_g), (D, used_d)):
        for name, p in net.named_parameters():
            if any(name.startswith(u) for u in used):
                assert p.grad is not None and p.grad.abs().sum() > 0, name
            else:
                assert p.grad is None, name


def test_penalties_differentiate_through_d():
    """WGAN-GP and R1 need D's input gradient with create_graph=True."""
    _, D = nets(tiny(16))
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(D(x, 2, 0.5).sum(), x, create_graph=True)
    grad.square().sum().backward()
    unused = {"from_rgb.0.conv.weight", "from_rgb.0.conv.bias", "blocks.0.out.bias"}  # (d/dx of a bias is 0)
    assert {n for n, p in D.named_parameters() if p.grad is None} == unused


def test_same_z_same_image_and_same_seed_same_weights():
    G, _ = nets(tiny(32))
    G_again, _ = nets(tiny(32))
    z = torch.randn(5, 16)
    assert torch.equal(G(z), G(z))
    assert torch.equal(G(z), G_again(z))
    torch.testing.assert_close(G(z)[3:4], G(z[3:4]), rtol=1e-5, atol=1e-5)  # no batch interaction in G
    G_other, _ = nets(tiny(32), seed=1)
    assert not torch.allclose(G(z), G_other(z))


def test_synthesize_gives_the_grown_stage_an_earlier_stage_or_a_resampled_size():
    cfg = tiny(32)
    G, _ = nets(cfg)
    z = torch.randn(3, 16)
    arch = {"name": "pggan", "net": cfg.to_dict()}
    full = synthesize(G, arch, z)
    assert full.shape == (3, 3, 32, 32) and not full.requires_grad
    torch.testing.assert_close(full, G(z).detach())
    # An earlier stage is drawn natively (the network grown so far), a size that is no stage is resampled.
    torch.testing.assert_close(synthesize(G, arch, z, resolution=8), G(z, stage=1).detach())
    assert synthesize(G, arch, z, resolution=48).shape == (3, 3, 48, 48)
    # A snapshot taken mid-growth draws at the stage and alpha training had reached.
    mid = {**arch, "stage": 2, "alpha": 0.25}
    torch.testing.assert_close(synthesize(G, mid, z), G(z, stage=2, alpha=0.25).detach())


def test_state_dict_and_config_round_trip_with_weights_only():
    cfg = tiny(16)
    G, D = nets(cfg)
    buf = io.BytesIO()
    torch.save({"G": G.state_dict(), "D": D.state_dict(), "cfg": cfg.to_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    cfg2 = PGGANConfig.from_dict(state["cfg"] | {"unknown_key": 1})
    assert cfg2 == cfg
    G2, D2 = nets(cfg2, seed=5)
    G2.load_state_dict(state["G"]), D2.load_state_dict(state["D"])
    z = torch.randn(2, 16)
    assert torch.equal(G2(z, 2, 0.3), G(z, 2, 0.3))


def test_pggan_arch_generate_has_the_arch_protocols_signature():
    """PGGANArch.generate takes return_ws as the Arch protocol says (mypy checks the signature): the images
    otherwise, and a one-line error for return_ws=True, which only path-length regularization asks (off for PGGAN)."""
    from models.arch import PGGANArch
    from models.trainer import TrainConfig

    arch = PGGANArch(TrainConfig(arch="pggan", resolution=16, batch=2,
                                 net=dict(channel_base=256, channel_max=32, z_dim=16)))
    z = torch.randn(2, arch.z_dim)
    stage, alpha = arch.schedule.at(0)
    with torch.no_grad():
        expected = arch.G(z, stage=stage, alpha=alpha)
        assert torch.equal(arch.generate(arch.G, z, 0, update_stats=False, return_ws=False), expected)
    assert arch.pl_weight == 0.0
    with pytest.raises(ValueError, match="pggan has no intermediate latent w"):
        arch.generate(arch.G, z, 0, return_ws=True)
