"""ADA: the augmentation pipe (models.augment.AugmentPipe) and the p controller (AdaController)."""
from __future__ import annotations

import io
import math

import pytest
import torch

from models.augment import AUGPIPE_SPECS, AdaController, AugmentPipe, AugmentSettings, _warp_bilinear, \
    _warp_sym6, rotate2d, rotate3d, scale2d, scale3d, translate2d, translate3d


def _images(n=16, c=3, h=32, w=32, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


def _smooth(n=4, c=3, h=32, w=32) -> torch.Tensor:
    """Low-frequency images (resampling them is nearly exact)."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([torch.sin(2 * math.pi * (xs * (k + 1) / 4 + ys / 3) + k) for k in range(n * c)])
    return base.reshape(n, c, h, w) * 0.8


def _pipe(spec="none", p=1.0, **kw) -> AugmentPipe:
    pipe = AugmentPipe(spec, **kw)
    pipe.p.fill_(p)
    return pipe


# --------------------------------------------------------------------------- the pipe

def test_default_is_bgc_and_p_starts_at_zero_as_identity():
    pipe = AugmentPipe()
    s = pipe.settings
    assert all(getattr(s, k) == 1 for k in AUGPIPE_SPECS["bgc"]) and s.imgfilter == s.noise == s.cutout == 0
    assert (s.xint_max, s.scale_std, s.rotate_max, s.aniso_std, s.xfrac_std) == (0.125, 0.2, 1, 0.2, 0.125)
    assert (s.brightness_std, s.contrast_std, s.hue_max, s.saturation_std) == (0.2, 0.5, 1, 1)
    assert float(pipe.p) == 0.0
    x = _images()
    state = torch.get_rng_state()
    assert torch.equal(pipe(x), x)
    assert torch.equal(AugmentPipe("bgcfnc")(x), x)
    assert torch.equal(torch.get_rng_state(), state)  # p = 0 draws nothing


def test_p_is_the_only_saved_state_and_loads_back():
    pipe = _pipe("bgc", p=0.3).to("cpu")  # nn.Module plumbing (to, state_dict) works
    assert set(pipe.state_dict()) == {"p"}
    other = AugmentPipe()
    other.load_state_dict(pipe.state_dict())
    assert float(other.p) == pytest.approx(0.3)


def test_unknown_spec_or_resample_is_an_error():
    with pytest.raises(ValueError, match="unknown augment spec"):
        AugmentPipe("bgzz")
    with pytest.raises(ValueError, match="resample"):
        AugmentPipe(resample="nearest")
    assert AugmentPipe(AugmentSettings(xflip=1)).settings.xflip == 1
    assert AugmentPipe("bgc", hue=0).settings.hue == 0


@pytest.mark.parametrize("resample", ["sym6", "bilinear"])
@pytest.mark.parametrize("spec", ["bgc", "bgcfnc"])
def test_p1_changes_every_image_and_keeps_shape_and_a_sensible_range(spec, resample):
    torch.manual_seed(1)
    x = _images(32, 3, 32, 32)
    y = _pipe(spec, 1.0, resample=resample)(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all()
    assert ((y - x).abs().flatten(1).amax(1) > 1e-3).all()
    assert y.abs().mean() < 3  # contrast/saturation can push pixels past ±1, as in the reference
    assert y.std() > 0.1


def test_xflip_gives_the_image_or_its_mirror_exactly():
    torch.manual_seed(0)
    x = _images(64)
    y = _pipe(xflip=1)(x)
    same = (y == x).flatten(1).all(1)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 15 < int(mirrored.sum()) < 49  # half of them, give or take


def test_rotate90_gives_one_of_the_four_rotations_exactly():
    torch.manual_seed(0)
    x = _images(64)
    y = _pipe(rotate90=1)(x)
    matches = torch.stack([(y == torch.rot90(x, k, dims=(2, 3))).flatten(1).all(1) for k in range(4)])
    assert (matches.sum(0) == 1).all()
    assert (matches.sum(1) > 4).all()  # every quarter turn shows up


def test_integer_translation_shifts_by_whole_pixels_within_range():
    torch.manual_seed(0)
    n, size = 32, 32
    cols = torch.arange(size, dtype=torch.float32).expand(size, size)
    x = torch.stack([cols, cols.t(), torch.zeros(size, size)]).expand(n, 3, size, size).contiguous()
    y = _pipe(xint=1)(x)
    inner = slice(4, size - 4)  # max shift is 0.125 × 32 = 4 px
    dx = (x[:, 0] - y[:, 0])[:, inner, inner]
    dy = (x[:, 1] - y[:, 1])[:, inner, inner]
    for d in (dx, dy):
        per_image = d.flatten(1)[:, :1]
        assert (d.flatten(1) == per_image).all()  # one whole-pixel shift per image
        assert (per_image == per_image.round()).all() and (per_image.abs() <= 4).all()
    assert (dx.flatten(1)[:, 0] != 0).sum() > n // 2
    assert set(y[:, 0].unique().tolist()) <= set(range(size))  # the border reflects real pixels


@pytest.mark.parametrize("resample", ["sym6", "bilinear"])
def test_geometric_transforms_keep_a_constant_image_constant(resample):
    """Reflection padding: no black (or zero) borders come in, whatever the rotation or scale."""
    torch.manual_seed(0)
    x = torch.full((16, 3, 32, 32), 0.37)
    y = _pipe("geom", 1.0, resample=resample)(x)
    assert torch.allclose(y, x, atol=1e-5)


@pytest.mark.parametrize("warp", [_warp_bilinear, _warp_sym6])
def test_resampling_a_whole_pixel_translation_is_a_shift(warp):
    x = _smooth()
    G_inv = translate2d(torch.full([4], 2.0), torch.full([4], -1.0))  # output (i, j) reads input (i-1, j+2)
    kwargs = {"taps": AugmentPipe().geom_taps} if warp is _warp_sym6 else {}
    y = warp(x, G_inv, **kwargs)
    tol = 1e-5 if warp is _warp_bilinear else 2e-2
    assert torch.allclose(y[:, :, 1:, :-2], x[:, :, :-1, 2:], atol=tol)


@pytest.mark.parametrize("resample", ["sym6", "bilinear"])
def test_geometric_transforms_warp_but_keep_the_picture(resample):
    torch.manual_seed(0)
    x = _smooth(8)
    y = _pipe("geom", 1.0, resample=resample)(x)
    assert ((y - x).abs().flatten(1).amax(1) > 1e-2).all()
    # Resampling moves pixels around; it does not invent values far outside the image's range.
    assert y.amin() > x.amin() - 0.1 and y.amax() < x.amax() + 0.1


def _pattern(h=32, w=32) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    chans = [torch.sin(0.31 * xs + 0.17 * ys), torch.cos(0.23 * xs - 0.41 * ys + 1.0), torch.sin(0.9 * xs * ys / w + 0.5)]
    return (torch.stack(chans)[None] * 0.9).float()


# NVlabs/stylegan2-ada-pytorch training/augment.py, AugmentPipe(scale=1, rotate=1, aniso=1, xfrac=1,
# brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)(_pattern(), debug_percentile=q) on CPU:
# y[0, :, 2::9, 3::9] flattened, then y.mean(), y.abs().mean().
REFERENCE = {
    0.3: ([-0.7709, -0.68749, 0.36166, -0.19659, 0.25323, -0.4765, -0.15223, -0.56766, -0.0177, -0.38136,
           -0.38101, 0.59704, 0.61021, 0.13205, -0.76564, 0.60455, 0.10476, 0.20434, 0.69333, 0.71041, 0.25409,
           -0.59077, -0.19111, 0.31001, 0.8441, -0.68231, -0.01602, 0.51722, -0.20823, -0.14266, -0.80443,
           0.32271, -0.17021, 0.27137, 0.41303, -0.10065, 0.58474, 0.12245, -0.42526, 0.25185, -0.2567,
           -0.40093, 0.52932, 0.5903, -0.06827, -0.05453, -0.8183, 0.18916], -0.047639, 0.39825),
    0.8: ([1.5029, 0.79111, -0.01282, -1.84461, -1.09497, -0.30069, 0.95987, -0.0892, 1.71257, -1.96421,
           0.82687, -1.07905, 0.99544, -0.35223, 1.52837, 0.87551, -0.74889, -1.62727, -0.57091, 1.23567,
           1.31351, -0.93308, 0.11136, -2.16237, -0.96244, 0.32468, 0.56449, -1.21339, 0.315, -1.89282,
           -1.03409, -2.07857, -0.54368, -0.02913, -1.1995, -0.17372, 0.00791, -0.08274, -0.02599, 1.01522,
           -0.90446, 1.18759, -1.69221, -1.14782, -1.6654, -0.14047, -0.58387, 0.32994], -0.122326, 0.893779),
}


@pytest.mark.parametrize("q", sorted(REFERENCE))
def test_geometry_and_color_match_the_reference(q):
    """The reference's debug_percentile=q draws every parameter from q (post-rotation 0); build the same
    transforms with this module's matrices and resampler and compare with the reference's output."""
    x = _pattern()
    h, w = x.shape[2:]
    one = torch.ones(1)
    z = torch.erfinv(torch.tensor([2 * q - 1]))  # the reference's stand-in for a normal draw
    s, a, t = torch.exp2(z * 0.2), torch.exp2(z * 0.2), z * 0.125
    G_inv = scale2d(1 / s, 1 / s) @ rotate2d((2 * q - 1) * math.pi * one) @ scale2d(1 / a, a) \
        @ translate2d(-t * w, -t * h)
    y = _warp_sym6(x, G_inv, AugmentPipe().geom_taps)
    b, c, sat = z * 0.2, torch.exp2(z * 0.5), torch.exp2(z * 1.0)
    v = torch.tensor([1.0, 1, 1, 0]) / math.sqrt(3)
    vvT, eye = torch.outer(v, v), torch.eye(4)
    C = translate3d(b, b, b)
    C = scale3d(c, c, c) @ C
    C = (eye - 2 * vvT * math.floor(q * 2)) @ C
    C = rotate3d((1 / math.sqrt(3),) * 3, (2 * q - 1) * math.pi * one) @ C
    C = (vvT + (eye - vvT) * sat) @ C
    y = AugmentPipe._execute_color(y, C)
    pixels, mean, abs_mean = REFERENCE[q]
    assert torch.allclose(y[0, :, 2::9, 3::9].flatten(), torch.tensor(pixels), atol=2e-4)
    assert y.mean().item() == pytest.approx(mean, abs=1e-5)
    assert y.abs().mean().item() == pytest.approx(abs_mean, abs=1e-5)


def _gray(n=16, h=16, w=16):
    return _images(n, 1, h, w).expand(n, 3, h, w).contiguous()


@pytest.mark.parametrize("op", ["brightness", "contrast", "lumaflip", "hue", "saturation"])
def test_color_transforms_keep_a_gray_image_gray(op):
    torch.manual_seed(0)
    x = _gray()
    y = _pipe(**{op: 1})(x)
    assert torch.allclose(y[:, 0], y[:, 1], atol=1e-5) and torch.allclose(y[:, 1], y[:, 2], atol=1e-5)


def test_brightness_adds_and_contrast_multiplies_per_image():
    torch.manual_seed(0)
    x = _images(32)
    d = (_pipe(brightness=1)(x) - x).flatten(1)
    assert torch.allclose(d, d[:, :1].expand_as(d), atol=1e-5)
    assert d[:, 0].abs().max() > 0.05
    r = (_pipe(contrast=1)(x) / x).flatten(1)
    assert torch.allclose(r, r[:, :1].expand_as(r), rtol=1e-4)


def test_lumaflip_negates_gray_and_hue_saturation_keep_luma():
    torch.manual_seed(0)
    x = _gray(32)
    y = _pipe(lumaflip=1)(x)
    flipped = torch.isclose(y, -x, atol=1e-6).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert (flipped | same).all() and flipped.any() and same.any()
    c = _images(16)
    for op in ("hue", "saturation"):
        y = _pipe(**{op: 1})(c)
        assert torch.allclose(y.mean(1), c.mean(1), atol=1e-5)  # rotations/scalings about the gray axis
        assert (y - c).abs().max() > 0.1


@pytest.mark.parametrize("resample", ["sym6", "bilinear"])
def test_quarter_turns_of_odd_by_even_images_are_resampled_not_rounded(resample):
    """Rotating a 15 × 16 image by 90° maps pixel centres half a pixel off the grid: no exact blit exists."""
    torch.manual_seed(0)
    n, h, w = 16, 15, 16
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    x = torch.stack([rows, cols, rows + cols]).expand(n, 3, h, w).contiguous()
    y = _pipe(rotate90=1, resample=resample)(x)
    inner = y[:, :2, 4:-4, 4:-4]
    turned = ~torch.isclose(inner, x[:, :2, 4:-4, 4:-4]).flatten(1).all(1)
    assert turned.any()
    # One of the two ramps is sampled between pixels (k + 0.5 or near it), not rounded to a neighbour.
    off_grid = (inner[turned] - inner[turned].round()).abs() > 0.3
    assert off_grid.float().mean() > 0.4


def test_single_channel_and_non_square_images():
    torch.manual_seed(0)
    for shape in [(8, 1, 32, 32), (8, 3, 24, 40)]:
        x = torch.rand(shape) * 2 - 1
        y = _pipe("bgc", 1.0)(x)
        assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("resample", ["sym6", "bilinear"])
def test_gradients_flow_to_the_input_images(resample):
    torch.manual_seed(0)
    x = _images(8).requires_grad_(True)
    y = _pipe("bgcfnc", 1.0, resample=resample)(x)
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("resample", ["sym6", "bilinear"])
def test_the_pipe_is_differentiable_gradcheck(resample):
    """Exact gradients w.r.t. the images for a fixed draw (a fresh seeded generator each call)."""
    pipe = _pipe("bgc", 0.8, resample=resample)
    x = _images(2, 3, 8, 8).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: pipe(t, generator=torch.Generator().manual_seed(3)), (x,),
                                    eps=1e-6, atol=1e-4, fast_mode=True)


def test_same_seed_same_augmentation_and_a_generator_leaves_the_global_rng_alone():
    x = _images(8, 3, 16, 16)
    pipe = _pipe("bgc", 0.6, noise=1, cutout=1)
    torch.manual_seed(123)
    a = pipe(x)
    torch.manual_seed(123)
    b = pipe(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, pipe(x))  # the RNG moved on
    state = torch.get_rng_state()
    c = pipe(x, generator=torch.Generator().manual_seed(5))
    d = pipe(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(c, d) and torch.equal(torch.get_rng_state(), state)


def test_probability_scales_with_p():
    torch.manual_seed(0)
    x = _images(400, 3, 8, 8)
    flipped = lambda p: int((_pipe(xflip=1, p=p)(x) != x).flatten(1).any(1).sum())  # noqa: E731
    # x-flip applies with probability p and then mirrors half of the time: P(changed) = p / 2.
    assert abs(flipped(0.2) - 40) < 20 and abs(flipped(0.8) - 160) < 35


# --------------------------------------------------------------------------- the controller

def test_step_size_matches_the_formula():
    ada = AdaController(target=0.6, interval=4, ada_kimg=500, batch=32)
    assert ada.step_size == 32 * 4 / 500_000
    for _ in range(4):
        ada.accumulate(torch.ones(32, 1))
    assert ada.due
    assert ada.update(0.25) == pytest.approx(0.25 + 32 * 4 / 500_000, abs=1e-15)
    assert ada.r_t == 1.0 and not ada.due
    for _ in range(4):
        ada.accumulate(-torch.ones(32, 1))
    assert ada.update() == pytest.approx(0.25, abs=1e-15)
    assert ada.r_t == -1.0


def test_r_t_is_the_mean_sign_over_the_interval_and_target_holds_p():
    ada = AdaController(target=0.5, interval=2, ada_kimg=1, batch=4)
    ada.accumulate(torch.tensor([3.0, 1.0, -2.0, 5.0]))   # signs sum 2
    ada.accumulate(torch.tensor([0.5, 0.1, 0.2, 0.3]))    # signs sum 4
    assert ada.update(0.3) == pytest.approx(0.3 + 8 / 1000)
    assert ada.r_t == pytest.approx(6 / 8)
    ada.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))
    ada.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert ada.update() == pytest.approx(0.3 + 8 / 1000)  # r_t == target: no change
    assert ada.update() == pytest.approx(0.3 + 8 / 1000)  # nothing accumulated: no change


def test_overfitting_d_drives_p_up_to_one_and_clamps():
    ada = AdaController(target=0.6, interval=4, ada_kimg=1, batch=16)  # 64 images per update, 0 → 1 in 16
    p, history = 0.0, []
    for _ in range(25):
        for _ in range(ada.interval):
            ada.accumulate(torch.rand(16) + 0.1)  # D says "real" to every real: overfitting
        p = ada.update(p)
        history.append(p)
    assert all(b >= a for a, b in zip(history, history[1:]))
    assert history[0] == pytest.approx(0.064) and history[-1] == 1.0 and ada.p == 1.0


def test_underfitting_d_drives_p_down_to_zero_and_stays():
    ada = AdaController(target=0.6, interval=4, ada_kimg=1, batch=16, p=0.5)
    for _ in range(20):
        for _ in range(ada.interval):
            ada.accumulate(-torch.rand(16) - 0.1)
        ada.update()
    assert ada.p == 0.0 and ada.r_t == -1.0


def test_p_settles_where_r_t_meets_the_target():
    """A D whose overfitting falls as p rises (fraction of positive reals = 1 - p/2): r_t = 1 - p, so
    p oscillates about 0.4 within one step."""
    torch.manual_seed(0)
    ada = AdaController(target=0.6, interval=4, ada_kimg=2, batch=64)
    p, tail = 0.0, []
    for i in range(400):
        for _ in range(ada.interval):
            positive = torch.rand(64) < 1 - p / 2
            ada.accumulate(torch.where(positive, 1.0, -1.0))
        p = ada.update(p)
        if i >= 300:
            tail.append(p)
    assert abs(sum(tail) / len(tail) - 0.4) < 0.05


def test_nan_logits_leave_p_alone():
    ada = AdaController(batch=2, interval=1, p=0.3)
    ada.accumulate(torch.tensor([float("nan"), 1.0]))
    assert ada.update() == 0.3 and math.isnan(ada.r_t)


def test_state_dict_round_trip_resumes_mid_interval_exactly():
    def feed(ada, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            ada.accumulate(torch.randn(8, generator=g) + 0.5)
            if ada.due:
                ada.update()

    ref = AdaController(target=0.6, interval=4, ada_kimg=0.1, batch=8)
    feed(ref, 10, 0)  # two updates, then two steps into the third interval
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    resumed = AdaController()
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.state_dict() == ref.state_dict() and resumed.steps == 2
    feed(ref, 7, 1)
    feed(resumed, 7, 1)
    assert resumed.state_dict() == ref.state_dict()
    assert resumed.p == ref.p and resumed.r_t == ref.r_t


def test_bad_controller_settings_are_errors():
    with pytest.raises(ValueError):
        AdaController(target=1.5)
    with pytest.raises(ValueError):
        AdaController(interval=0)
