"""ganflow's training steps equal NVlabs/stylegan3's own, step by step (issue 26).

tests/data/training_parity/record_training_parity.py ran the reference's training loop lines (phases Gmain, Greg,
Dmain, Dreg, each its own Adam step at lr and betas scaled for lazy regularization; StyleGAN2Loss with style
mixing, path length, R1 and StyleGAN3-R's blur; its AugmentPipe; G_ema with ramp-up) on small networks on the
CPU. Here the same starting networks, the same real batches and the same random streams go through ganflow's
Trainer, and every loss value, every phase's gradients on the first step (where all four phases run), every
tensor of G, D and G_ema after each step and the final weights must equal the reference's: StyleGAN2 over a
whole lazy-regularization cycle (16 steps: R1 on 0, path length on 0, 4, 8, 12), the other cases over their
first steps (StyleGAN3-T's float32 rounding flips Adam's step on a near-zero gradient from its 5th step on).
StyleGAN3-T and -R, and StyleGAN2 with ADA, are then checked over a whole 16-step cycle teacher-forced: every step
starts from the reference's recorded state before it (G, D, Adam's moments and step counts, the path-length mean, the
global generator), so rounding cannot accumulate, and must end at the reference's state after it.

Tolerances: float32 computed in another order (ganflow's own ops; one backward where the reference runs two and
sums) differs by ~1e-7 relative per op, ~1e-5 of the largest gradient after StyleGAN3's 14 layers: gradients at
5e-5 of the phase's largest, losses at 1e-4 relative. Adam with beta1 = 0 moves each weight by about
lr x sign(grad), so rounding can move a weight whose gradient is near zero by a fraction of lr: weights at
lr / 20 (1e-4) each; per-step digests (per tensor: sum and a random projection) at 2e-5 x 4 sqrt(n).
"""
from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
import torch

from models.arch import StyleGAN3Arch, build_arch
from models.augment import AdaController, AugmentPipe
from models.trainer import TrainConfig, Trainer
from models.transfer import arch_settings, load_networks

DATA = Path(__file__).parent / "data" / "training_parity"
LOSS_KEYS = {"Loss/G/loss": "loss_G", "Loss/pl_penalty": "pl_penalty", "Loss/D/loss": "loss_D",
             "Loss/r1_penalty": "r1"}
WEIGHT_ATOL = 1e-4   # per weight: lr / 20
DIGEST_ATOL = 2e-5   # per weight in a digest, times 4 sqrt(n) for a sum of n roundings
GRAD_ATOL = 5e-5  # of the phase's largest gradient
RTOL = 1e-4


def _load(name: str) -> dict:
    return torch.load(io.BytesIO(gzip.decompress((DATA / f"{name}.pt.gz").read_bytes())), weights_only=True)


def _unpack(packed: dict) -> dict[str, torch.Tensor]:
    sizes = [int(torch.tensor(s).prod()) for s in packed["shapes"]]
    return {n: t.reshape(s) for n, t, s in zip(packed["names"], packed["data"].split(sizes), packed["shapes"])}


def _load_reference(net: torch.nn.Module, ref: dict[str, torch.Tensor]) -> None:
    """The reference's tensors into a ganflow network by name (the names are the same); the reference also
    keeps constant filters ganflow derives, which must agree."""
    own = net.state_dict()
    missing = [k for k in own if k not in ref]
    assert not missing, f"reference lacks {missing[:5]}"
    for k, v in ref.items():
        if k not in own:
            buffers = dict(net.named_buffers())
            assert k.endswith("resample_filter") or (k in buffers and torch.allclose(buffers[k], v)), k
    net.load_state_dict({k: ref[k] for k in own})


def _digest(state: dict) -> dict[str, torch.Tensor]:
    """As record_training_parity.digest: per tensor [sum, projection on a fixed random direction]."""
    out = {}
    for k, v in state.items():
        if v.is_floating_point():
            v = v.detach().double().flatten()
            direction = torch.randn(v.numel(), generator=torch.Generator().manual_seed(v.numel()), dtype=torch.float64)
            out[k] = torch.stack([v.sum(), v @ direction])
    return out


def _net_config(settings: dict) -> tuple[str, dict]:
    G = settings["G"]
    net = {"z_dim": G["z_dim"], "w_dim": G["w_dim"], "mapping_layers": G["mapping_kwargs"]["num_layers"],
           "channel_base": 128, "channel_max": 8, "conv_clamp": 256.0}  # mbstd group: the batch, 4
    if "stylegan3" in G["class_name"]:
        net.update(g_channel_base=G["channel_base"], g_channel_max=G["channel_max"])
        return ("stylegan3-r" if G.get("conv_kernel") == 1 else "stylegan3-t"), net
    return "stylegan2", {**net, "w_avg_beta": G["mapping_kwargs"]["w_avg_beta"]}


class Recorder:
    """Per step, what the reference recorded: losses (progress_fn's stats), digests of G, D, G_ema, pl_mean;
    and every phase's gradients on the first step (an optimizer step each, in the reference's phase order)."""

    def __init__(self, trainer: Trainer):
        self.trainer, self.steps, self.grads = trainer, [], []
        for opt, net in ((trainer.opt_G, trainer.G), (trainer.opt_D, trainer.D)):
            opt.step = self._recording(opt.step, net)

    def _recording(self, step, net):
        def wrapped(*args, **kwargs):
            if self.trainer.step == 0:
                self.grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})
            return step(*args, **kwargs)
        return wrapped

    def __call__(self, stats: dict) -> None:
        t = self.trainer
        self.steps.append({"stats": stats, "pl_mean": float(t.pl_mean),
                           "digest": {k: _digest(m.state_dict()) for k, m in (("G", t.G), ("D", t.D),
                                                                                ("G_ema", t.G_ema))}})


def _new_trainer(rec: dict, tmp_path: Path) -> Trainer:
    """A Trainer as the recorded case's settings, with the reference's initial G, D (G_ema: G)."""
    s = rec["settings"]
    arch, net = _net_config(s)
    cfg = TrainConfig(arch=arch, resolution=s["resolution"], batch=s["batch"],
                      lr=s["lr_g"] if arch == "stylegan2" else 0.0,  # StyleGAN3: the defaults, G 0.0025, D 0.002
                      r1_gamma=s["r1_gamma"], ada_target=0.0, seed=s["run_seed"], snapshot_kimg=1000.0,
                      amp="off", net=net, freeze_d=s.get("freezed", 0))
    trainer = Trainer(cfg, rec["images"], tmp_path / "run")
    _load_reference(trainer.G, _unpack(rec["init"]["G"]))
    _load_reference(trainer.G_ema, _unpack(rec["init"]["G"]))
    _load_reference(trainer.D, _unpack(rec["init"]["D"]))
    if s.get("augment"):
        # The reference's AugmentPipe at a fixed p (its --aug fixed), the 'bgc' pipe less its pixel blits.
        trainer.augment = AugmentPipe("none", p=s["augment_p"], **s["augment"])
    return trainer


def _train(rec: dict, tmp_path: Path, trainer: Trainer | None = None) -> tuple[Trainer, Recorder]:
    s = rec["settings"]
    if trainer is None:
        trainer = _new_trainer(rec, tmp_path)
    elif s.get("augment"):
        trainer.augment = AugmentPipe("none", p=s["augment_p"], **s["augment"])
    recorder = Recorder(trainer)
    torch.manual_seed(s["torch_seed"])
    trainer.train(len(rec["steps"]) * s["batch"] / 1000, progress_fn=recorder)
    return trainer, recorder


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> float:
    """The largest difference beyond `RTOL` relative, as a fraction of `atol` (<= 1 passes)."""
    return float(((a.double() - b.double()).abs() / (atol + RTOL * b.double().abs())).max())


def _check(rec: dict, recorder: Recorder, trainer: Trainer) -> None:
    phases = list(rec["grads"])
    assert len(recorder.grads) == len(phases), f"{len(recorder.grads)} optimizer steps on step 0, reference {phases}"
    for name, ours in zip(phases, recorder.grads):
        ref = _unpack(rec["grads"][name])
        assert set(ref) <= set(ours), f"{name}: {sorted(set(ref) - set(ours))} got no gradient"
        assert set(ours) == set(ref), f"{name}: {sorted(set(ours) - set(ref))} got a gradient (the reference: None)"
        scale = max(float(g.abs().max()) for g in ref.values())
        worst = max(ref, key=lambda k: _close(ours[k], ref[k], GRAD_ATOL * scale))
        assert _close(ours[worst], ref[worst], GRAD_ATOL * scale) <= 1, (
            f"{name} gradient of {worst} differs by {float((ours[worst] - ref[worst]).abs().max()):.3g} "
            f"(largest gradient {scale:.3g})")
    assert len(recorder.steps) == len(rec["steps"])
    for i, (ours, ref) in enumerate(zip(recorder.steps, rec["steps"])):
        _assert_step_losses(i, ours, ref)
        for net, packed in ref["digest"].items():
            expected = dict(zip(packed["names"], packed["values"]))
            got = ours["digest"][net]
            assert sorted(got) == sorted(k for k in expected if k in got) and set(got) <= set(expected)
            sizes = {k: v.numel() for k, v in getattr(trainer, net).state_dict().items()}
            for k in got:
                assert _close(got[k], expected[k], DIGEST_ATOL * 4 * sizes[k] ** 0.5) <= 1, (
                    f"step {i}: {net}.{k} moved otherwise (sum, projection {got[k].tolist()} vs "
                    f"{expected[k].tolist()})")
    for net_name, net in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema)):
        final = _unpack(rec["final"][net_name])
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                assert _close(v, final[k], WEIGHT_ATOL) <= 1, (
                    f"final {net_name}.{k} differs by {float((v - final[k]).abs().max()):.3g}")


def _teacher_states(teacher: dict) -> list[dict]:
    """The recorder's per-step states (before steps 1..15, then after step 15), their tensors rebuilt bit for bit
    from its XOR chain of byte planes."""
    states: list[dict] = [{"rng": rng} for rng in teacher["rng"]] + [{}]
    for key, packed in teacher["packs"].items():
        planes = packed["planes"]
        bits = planes.permute(1, 2, 0).contiguous().view(torch.int32).reshape(planes.shape[1], -1)
        for i in range(1, len(bits)):
            bits[i] ^= bits[i - 1]
        for state, row in zip(states, bits.view(torch.float32)):
            state[key] = _unpack({"names": packed["names"], "shapes": packed["shapes"], "data": row})
    for key in ("opt_G", "opt_D"):
        for state, steps in zip(states, teacher["opt_step"][key]):
            state[key + "_step"] = steps
    return states


def _load_teacher_state(trainer: Trainer, state: dict, pl_mean: float) -> None:
    """The reference's G, D, Adam states, path-length mean and global generator into the trainer (G_ema stays its
    own). pl_mean: the reference's float32 running mean after the previous step, recorded exactly as a float."""
    _load_reference(trainer.G, state["G"])
    _load_reference(trainer.D, state["D"])
    for opt, net, key in ((trainer.opt_G, trainer.G, "opt_G"), (trainer.opt_D, trainer.D, "opt_D")):
        assert all(group["betas"][0] == 0 for group in opt.param_groups)  # first moments: overwritten by the step
        opt.state.clear()
        for (name, p), steps in zip(net.named_parameters(), state[key + "_step"].tolist()):
            if steps:
                opt.state[p] = {"step": torch.tensor(float(steps)), "exp_avg": torch.zeros_like(p),
                                "exp_avg_sq": state[key][name].clone()}
    trainer.pl_mean.fill_(pl_mean)
    torch.set_rng_state(state["rng"].clone())  # a row of a stacked tensor: set_rng_state reads its storage


@pytest.mark.parametrize("case", ["sg3t-cycle", "sg3r-ada-cycle", "sg2-ada-cycle"])
def test_every_step_of_a_cycle_equals_the_references_from_its_state(case, tmp_path, one_torch_thread, monkeypatch):
    """StyleGAN3-T and -R (with ADA at a fixed p and the blur), and StyleGAN2 with ADA at a fixed p (style mixing,
    lazy path length on steps 0, 4, 8, 12 with its running mean, R1 on 0), over a whole 16-step cycle,
    teacher-forced: each step starts from the reference's G, D, Adam moments and step counts, path-length mean
    and global generator before it (the free-running check below drifts from the 5th step: rounding flips Adam's
    sign step on near-zero gradients), and its losses, path-length mean, G and D after it, and G_ema (ganflow's
    own, updated each step from these G: a convex mix, which does not amplify rounding) must equal the
    reference's within the tolerances above."""
    rec = _load(case)
    s = rec["settings"]
    states = _teacher_states(rec["teacher"])
    assert s["steps"] == len(rec["steps"]) == len(states) == 16
    trainer = _new_trainer(rec, tmp_path)
    # Each one-step train() ends in a checkpoint and a sample grid: not what is checked here, and most of the time.
    monkeypatch.setattr(trainer, "snapshot", lambda: tmp_path)
    recorder = Recorder(trainer)
    torch.manual_seed(s["torch_seed"])
    for i, ref in enumerate(rec["steps"]):
        if i > 0:
            _load_teacher_state(trainer, states[i - 1], rec["steps"][i - 1]["pl_mean"])
        assert (trainer.step, trainer.nimg) == (i, i * s["batch"])
        trainer.train((i + 1) * s["batch"] / 1000, progress_fn=recorder)
        ours = recorder.steps[-1]
        _assert_step_losses(i, ours, ref)
        for net_name in ("G", "D"):
            after = states[i][net_name]
            for k, v in getattr(trainer, net_name).state_dict().items():
                if v.is_floating_point():
                    assert _close(v, after[k], WEIGHT_ATOL) <= 1, (
                        f"step {i}: {net_name}.{k} differs by {float((v - after[k]).abs().max()):.3g}")
        expected = dict(zip(ref["digest"]["G_ema"]["names"], ref["digest"]["G_ema"]["values"]))
        sizes = {k: v.numel() for k, v in trainer.G_ema.state_dict().items()}
        for k, got in ours["digest"]["G_ema"].items():
            assert _close(got, expected[k], DIGEST_ATOL * 4 * sizes[k] ** 0.5) <= 1, f"step {i}: G_ema.{k}"
    final = _unpack(rec["final"]["G_ema"])
    for k, v in trainer.G_ema.state_dict().items():
        if v.is_floating_point():
            assert _close(v, final[k], WEIGHT_ATOL) <= 1, f"final G_ema.{k}: {float((v - final[k]).abs().max()):.3g}"


def _assert_step_losses(i: int, ours: dict, ref: dict) -> None:
    """Step i's loss values and path-length mean equal the reference's (each phase that ran there ran here)."""
    for phase, values in ref["losses"].items():
        for key, value in values.items():
            assert LOSS_KEYS[key] in ours["stats"], f"step {i}: no {phase} {key} (the phase did not run)"
            got = ours["stats"][LOSS_KEYS[key]]
            assert got == pytest.approx(value, rel=RTOL, abs=1e-7), f"step {i} {phase} {key}: {got} vs {value}"
    assert ours["pl_mean"] == pytest.approx(ref["pl_mean"], rel=RTOL, abs=1e-7), f"step {i} pl_mean"


@pytest.mark.parametrize("case", ["sg2", "sg2-ada", "sg3t", "sg3r-ada"])
def test_a_lazy_regularization_cycle_equals_the_references(case, tmp_path, one_torch_thread):
    """16 steps: R1 and path length on step 0, path length on 4, 8, 12; with ADA at a fixed p and without;
    StyleGAN3-R with its blur (sigma 10 at the start, fading) before the augmentation."""
    rec = _load(case)
    trainer, recorder = _train(rec, tmp_path)
    _check(rec, recorder, trainer)


def test_freeze_d_freezes_the_references_layers_on_the_same_step(tmp_path, one_torch_thread):
    """--freezed 3: the first block's fromrgb, conv0 and conv1 stay, everything else moves as the reference's."""
    rec = _load("sg2-freezed")
    trainer, recorder = _train(rec, tmp_path)
    assert sorted(trainer.frozen) == ["b16.conv0.bias", "b16.conv0.weight", "b16.conv1.bias", "b16.conv1.weight",
                                      "b16.fromrgb.bias", "b16.fromrgb.weight"]
    _check(rec, recorder, trainer)


def test_a_transfer_run_takes_its_first_step_as_the_references_resume(tmp_path, one_torch_thread):
    """An imported NVIDIA pickle (stylegan3's --cfg stylegan2) as the reference's --resume: G, D and G_ema from
    the file, no EMA ramp-up; one step with all four phases."""
    rec = _load("transfer")
    s = rec["settings"]
    nets = load_networks(DATA.parent / "nvidia_pickles" / s["pickle"])
    arch, resolution, net = arch_settings(nets.arch)
    cfg = TrainConfig(arch=arch, resolution=resolution, batch=4, lr=s["lr_g"], r1_gamma=1.0, ada_target=0.0,
                      seed=5, snapshot_kimg=1000.0, amp="off", net=net, ema_rampup=0.0)
    trainer = Trainer(cfg, rec["images"], tmp_path / "run")
    trainer.start_from(nets)
    # ADA's statistics (p stays 0 for this one step: D's draws are unchanged) count Dreg's pass over the reals
    # too, as the reference's collector of every 'Loss/signs/real' report.
    trainer.ada = AdaController(target=0.6, interval=4, ada_kimg=100, batch=4)
    rec["settings"] = {**s, "batch": 4, "torch_seed": 1234, "run_seed": 5}
    trainer, recorder = _train(rec, tmp_path, trainer)
    _check(rec, recorder, trainer)
    assert (trainer.ada.steps, float(trainer.ada._count)) == (2, 8.0)


def test_a_run_from_a_pretrained_network_does_not_blur_as_the_references_resume():
    """train.py --resume sets blur_init_sigma 0: StyleGAN3-R fine-tuning shows D unblurred images from the start."""
    def sigma(**kw):
        arch = build_arch(TrainConfig(arch="stylegan3-r", resolution=16, batch=4, **kw))
        assert isinstance(arch, StyleGAN3Arch)
        return arch.blur_sigma(0)

    assert (sigma(), sigma(transfer_from="pretrained.pkl")) == (10.0, 0.0)


def test_a_nan_gradient_is_zeroed_before_adam_as_the_reference(tmp_path, one_torch_thread):
    """The reference's loop runs nan_to_num(nan=0, posinf=1e5, neginf=-1e5) on every phase's gradients: a NaN
    batch must not turn Adam's moments, and every later step, into NaN."""
    rec = _load("sg2-freezed")
    arch, net = _net_config(rec["settings"])
    trainer = Trainer(TrainConfig(arch=arch, resolution=16, batch=4, amp="off", net=net), rec["images"], tmp_path)
    weight = trainer.D.b4.out.weight
    trainer._optimizer_step(trainer.opt_D, trainer.D, weight.sum() * float("nan"))
    assert torch.isfinite(weight).all() and all(torch.isfinite(v).all() for st in trainer.opt_D.state.values()
                                                for v in st.values())


def test_ada_p_follows_the_references_heuristic():
    """p after 64 steps of recorded D(real) logits (R1 steps report D's second pass over the reals too): down to
    its floor of 0 while D is unsure, then up once D's signs pass the target."""
    rec = _load("ada")
    s = rec["settings"]
    ada = AdaController(target=s["target"], interval=s["interval"], ada_kimg=s["ada_kimg"], batch=s["batch"])
    ps = []
    for step, logits in enumerate(rec["logits"]):
        for pass_logits in logits:
            ada.accumulate(pass_logits)
        if (step + 1) % ada.interval == 0:
            ada.update()
        ps.append(ada.p)
    assert ps == pytest.approx(rec["p"].tolist(), abs=1e-6)  # the reference keeps p in float32
    assert min(ps) == 0 and ps[-1] > 0


@pytest.mark.parametrize("nimg, stage, alpha", [(10, 1, 0.25), (20, 1, 1.0)])
def test_pggan_steps_follow_the_papers_formulas(nimg, stage, alpha, tmp_path, one_torch_thread):
    """No PyTorch reference of the paper's code runs here (tkarras/progressive_growing_of_gans is TensorFlow 1), so
    one fade-in step (alpha 0.25) and one stabilize step are checked against its formulas, written out from its
    loss.py and networks.py: D's loss D(fake) - D(real) + 10 (||grad D(lerp(real, fake, u))|| - 1)^2 +
    0.001 D(real)^2, G's -D(fake); reals lerped from their 2x pooled-and-upsampled version by alpha (process_reals),
    G's image from the nearest-upsampled previous ToRGB, D's features from the previous FromRGB of the pooled
    image. The trainer's gradients of D and G must equal these formulas' on the same draws."""
    import torch.nn.functional as F

    rec = _load("sg2-freezed")  # its real images
    cfg = TrainConfig(arch="pggan", resolution=16, batch=4, loss="wgan", amp="off", fade_kimg=0.008,
                      stabilize_kimg=0.008, net={"channel_base": 256, "channel_max": 16, "z_dim": 16})
    trainer = Trainer(cfg, rec["images"], tmp_path)
    trainer.nimg = nimg
    assert trainer.arch.progress(nimg)["stage"] == stage and trainer.arch.progress(nimg)["alpha"] == alpha
    grads: dict[str, dict] = {}

    def keep_grads(name: str, net: torch.nn.Module):  # in place of the optimizer's step: the gradients, kept
        return lambda *args, **kwargs: grads.setdefault(
            name, {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})

    trainer.opt_G.step = keep_grads("G", trainer.G)
    trainer.opt_D.step = keep_grads("D", trainer.D)
    index = trainer.sampler.take(4)
    trainer.sampler.state.index -= 4  # the trainer takes the same images
    zs = trainer._phase_latents()
    torch.manual_seed(0)
    trainer._g_step(zs)
    trainer._d_step(trainer._reals(), zs)

    G, D = trainer.G, trainer.D
    full = rec["images"][index].float() / 127.5 - 1
    reals = F.avg_pool2d(full, 16 // (4 * 2 ** stage))
    reals = reals + (F.interpolate(F.avg_pool2d(reals, 2), scale_factor=2.0) - reals) * (1 - alpha)

    def g(z):
        x = G.blocks[0](z)
        for s in range(1, stage):
            x = G.blocks[s](x)
        new = G.to_rgb[stage](G.blocks[stage](x))
        return new + (F.interpolate(G.to_rgb[stage - 1](x), scale_factor=2.0) - new) * (1 - alpha)

    def d(img):
        x = D.blocks[stage](D.from_rgb[stage](img))
        x = x + (D.from_rgb[stage - 1](F.avg_pool2d(img, 2)) - x) * (1 - alpha)
        for s in range(stage - 1, -1, -1):
            x = D.blocks[s](x)
        return x

    expected_g = torch.autograd.grad((-d(g(zs["Gboth"]))).mean(), list(G.parameters()), allow_unused=True)
    torch.manual_seed(0)  # the trainer drew u after G's step, which draws nothing
    fakes = g(zs["Dboth"]).detach()
    real_scores, fake_scores = d(reals), d(fakes)
    u = torch.rand([4, 1, 1, 1])
    mixed = (reals + (fakes - reals) * u).requires_grad_(True)
    (mixed_grads,) = torch.autograd.grad(d(mixed).sum(), mixed, create_graph=True)
    penalty = (mixed_grads.square().sum(dim=[1, 2, 3]).sqrt() - 1).square() * 10
    loss = fake_scores - real_scores + penalty[:, None] + 0.001 * real_scores.square()
    expected_d = torch.autograd.grad(loss.mean(), list(D.parameters()), allow_unused=True)
    for name, net, expected in (("G", G, expected_g), ("D", D, expected_d)):
        for (k, _), e in zip(net.named_parameters(), expected):
            if e is None or not e.any():
                assert k not in grads[name] or not grads[name][k].any(), f"{name}.{k}: the formula has no gradient"
                continue
            assert torch.allclose(grads[name][k], e, rtol=1e-4, atol=1e-6 * float(e.abs().max())), f"{name}.{k}"


def test_g_ema_ramps_up_where_the_reference_does(tmp_path, one_torch_thread):
    """stylegan2-ada-pytorch ramps G_ema up (0.05) in its auto and cifar configs only, stylegan3's train.py for
    every --cfg but --resume, the PGGAN paper never (beta 0.999 from the first step)."""
    def rampup(arch, **kw):
        return build_arch(TrainConfig(arch=arch, resolution=16, batch=4, **kw)).ema_rampup

    assert [rampup("stylegan2"), rampup("stylegan2", preset="cifar"), rampup("stylegan2", preset="paper256"),
            rampup("stylegan3-t"), rampup("stylegan3-t", ema_rampup=0.0), rampup("pggan")] == [0.05, 0.05, 0, 0.05, 0, 0]
    cfg = TrainConfig(arch="pggan", resolution=16, batch=4, amp="off", net={"channel_base": 256, "channel_max": 16,
                                                                             "z_dim": 16})
    trainer = Trainer(cfg, _load("sg2-freezed")["images"], tmp_path)
    trainer.nimg = 4
    with torch.no_grad():
        for p in trainer.G.parameters():
            p.add_(1.0)
    before = [p.clone() for p in trainer.G_ema.parameters()]
    trainer._update_ema()
    for old, new, p in zip(before, trainer.G_ema.parameters(), trainer.G.parameters()):
        assert torch.allclose(new, p.lerp(old, 0.999), atol=1e-6)
