"""StyleGAN3-T/R (models/stylegan3.py) against NVlabs/stylegan3's generator, recorded in tests/data/stylegan3
by record.py from a scratch copy of the reference (the reference is never imported here).
"""
from __future__ import annotations

import gzip
import hashlib
import io
from pathlib import Path

import pytest
import torch

from models.ops import count_parameters
from models.stylegan2 import Discriminator, StyleGAN2Config
from models.stylegan3 import Generator, StyleGAN3Config, preset

DATA = Path(__file__).parent / "data" / "stylegan3"
RECORDED = ("t16", "r16", "t32")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def recorded(name: str) -> dict:
    return torch.load(io.BytesIO(gzip.decompress((DATA / f"{name}.pt.gz").read_bytes())), weights_only=True)


def build(rec: dict) -> Generator:
    torch.manual_seed(rec["seed"])
    return Generator(StyleGAN3Config.from_dict(rec["config"])).eval()


@pytest.fixture(scope="module", params=RECORDED)
def case(request):
    return request.param, recorded(request.param)


def test_same_seed_gives_the_references_initial_state_dict(case):
    name, rec = case
    state = build(rec).state_dict()
    assert list(state) == list(rec["init"]), f"{name}: state-dict keys differ from the reference's"
    for key, ref in rec["init"].items():
        t = state[key].detach().to(torch.float32).contiguous()
        assert list(t.shape) == ref["shape"], key
        if hashlib.sha256(t.numpy().tobytes()).hexdigest() != ref["sha256"]:
            # Not bit-identical: say how far off (sums within float rounding would still be a real difference).
            pytest.fail(f"{name}: {key} differs from the reference: sum {t.double().sum():.9g} vs "
                        f"{ref['sum']:.9g}, sum of squares {t.double().square().sum():.9g} vs {ref['sumsq']:.9g}")


@pytest.mark.parametrize("fused", [True, False], ids=["grouped-conv", "split-conv"])
def test_same_z_gives_the_references_images(case, fused):
    name, rec = case
    G = build(rec)
    with torch.no_grad():
        images = G.synthesis(G.mapping(rec["z"]), fused_modconv=fused)
    assert images.shape == rec["images"].shape
    torch.testing.assert_close(images, rec["images"], rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_ema_updates_and_truncation_follow_the_reference(case):
    """update_emas moves w_avg and every layer's magnitude EMA as the reference; truncation then pulls
    towards the moved w_avg."""
    name, rec = case
    G = build(rec)
    with torch.no_grad():
        torch.testing.assert_close(G(rec["z"], update_emas=True), rec["images_update"], rtol=0, atol=1e-5)
        state = G.state_dict()
        assert set(rec["buffers"]) == {k for k in state if k.endswith(("w_avg", "magnitude_ema"))}
        for key, value in rec["buffers"].items():
            torch.testing.assert_close(state[key], value, rtol=1e-6, atol=1e-6, msg=lambda m: f"{key}: {m}")  # noqa: B023
        assert not torch.equal(state["mapping.w_avg"], torch.zeros_like(state["mapping.w_avg"]))
        torch.testing.assert_close(G(rec["z"]), rec["images_after"], rtol=0, atol=1e-5)
        torch.testing.assert_close(G(rec["z"], truncation_psi=0.5), rec["images_truncated"], rtol=0, atol=1e-5)


def test_parameter_counts_at_1024_equal_the_references():
    """The paper's 22.3M (T) / 15.1M (R) generators and StyleGAN2's residual D, as train.py builds them
    with --cbase 32768 --cmax 512 (shapes only, on the meta device)."""
    with torch.device("meta"):
        t = count_parameters(Generator(preset(1024, "stylegan3-t")))
        r = count_parameters(Generator(preset(1024, "stylegan3-r")))
        d = count_parameters(Discriminator(StyleGAN2Config(resolution=1024, channel_base=32768, channel_max=512)))
    assert (t, r, d) == (22_313_167, 15_093_151, 29_012_513)


def test_presets_set_what_train_py_sets():
    t, r = preset(256, "stylegan3-t", batch=32), preset(256, "stylegan3-r", batch=32)
    assert (t.mapping_layers, t.conv_kernel, t.use_radial_filters, t.channel_base, t.channel_max) == (2, 3, False, 32768, 512)
    assert (r.conv_kernel, r.use_radial_filters, r.channel_base, r.channel_max) == (1, True, 65536, 1024)
    assert t.magnitude_ema_beta == r.magnitude_ema_beta == 0.5 ** (32 / 20e3)
    assert (t.kind, r.kind) == ("stylegan3-t", "stylegan3-r")
    assert StyleGAN3Config.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="power of two >= 16"):
        StyleGAN3Config(resolution=48)


def test_gradients_reach_every_parameter_and_bad_input_is_refused():
    rec = recorded("r16")
    G = build(rec).train()
    G(rec["z"]).square().mean().backward()
    missing = [n for n, p in G.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # The input's affine starts at zero weight but still gets gradients; every weight takes part.
    assert not missing, missing
    with pytest.raises(ValueError, match=r"ws must be \[N, 16, 16\]"):
        G.synthesis(torch.zeros(1, 3, 16))
    with pytest.raises(ValueError, match="noise_mode"):
        G.synthesis(G.mapping(rec["z"]), noise_mode="loud")
