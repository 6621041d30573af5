"""Record what tests/test_training_parity.py checks ganflow's training against: NVlabs/stylegan3's own training.

Not run by the tests. It runs the reference's code (never a dependency of ganflow, never copied into it), from
a scratch checkout, on the CPU, with this repository on the path as well (for the data sampler only):

    git --git-dir=<mirror of NVlabs/stylegan3> worktree add /work/ref/stylegan3   # or git clone / archive
    PYTHONPATH=$PWD:/work/ref/stylegan3 .venv/bin/python tests/data/training_parity/record_training_parity.py

Recorded from NVlabs/stylegan3 at c233a91 with torch 2.14.1 on x86-64, one thread.

Each case builds small networks from the kwargs the reference's train.py assembles for its --cfg (16x16, a few
channels), perturbs every tensor away from its initial constant (so noise strengths, biases and w_avg matter),
and runs the lines of the reference's training/training_loop.py on them: the phases Gmain, Greg, Dmain, Dreg (or
Gboth) with Adam's lr and betas scaled by c = interval / (interval + 1), each phase its own optimizer step, its
StyleGAN2Loss (style mixing, path length with its batch shrink and running mean, R1, StyleGAN3-R's blur), its
AugmentPipe at a fixed p, G_ema with its half-life and ramp-up, ADA's collector and p update.

Two departures of ganflow's, made here so the random streams line up (README, "Departures from the reference"):
- latents come from a generator of their own seeded with the run's seed, one draw per step of
  [phases * batch, z_dim] as the reference's all_gen_z (the reference draws them from the global stream);
- real batches are taken by ganflow's ShuffledSampler (the reference's InfiniteSampler orders them otherwise).
Every other draw (style-mixing cutoffs, noise inputs, path-length noise, augmentation parameters) is the
reference's own, from torch's global generator seeded with TORCH_SEED before the first step: ganflow's trainer
draws the same numbers in the same order, which the test checks.

Written per case, `<case>.pt.gz` (torch.save, gzipped; loads with weights_only=True): the settings, the
initial G and D state dicts (reference names), the real images, per step the loss values and per-tensor digests
(sum and a fixed random projection) of G, D and G_ema after the step, every phase's full gradients on step 0,
and the full final state dicts. `ada.pt.gz`: ADA's p after a run of steps of recorded D(real) logits.

`sg3t-cycle.pt.gz`, `sg3r-ada-cycle.pt.gz`, `sg2-ada-cycle.pt.gz` (TEACHER_CASES: the sg3t, sg3r-ada and sg2-ada
runs over all 16 steps) also hold, under "teacher", the reference's state after each step, which is the state before
the next: G and D (parameters and buffers), each Adam's per-parameter step count and second moment (first moments:
beta1 = 0 makes Adam overwrite them with the step's gradient; StyleGAN2's G and D each have one Adam shared by the
main and lazy-regularization phases, betas [0, 0.99] ** c, so beta1 stays 0), and the global generator's state
before steps 1..15; the path-length running mean after each step is the step's exact `pl_mean` (a float32 as a float); exact float32, stored as each
step's bits XORed with the previous step's, split into byte planes, so gzip finds the unchanged high bytes. They
drop step 0's gradients (the free-running cases check them) and the final G and D (the last teacher state).
"""
from __future__ import annotations

import copy
import gzip
import importlib.util
import io
import sys
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TORCH_SEED = 1234        # the global generator before the first step (both sides)
RUN_SEED = 5             # ganflow's TrainConfig.seed: the latent generator and the sampler
BATCH = 4
RES = 16
NUM_IMAGES = 8
R1_GAMMA = 1.0           # large enough that R1 moves D visibly on tiny nets
LR_G = LR_D = 0.002      # the reference's --glr/--dlr for --cfg stylegan2 (StyleGAN3: --glr 0.0025)

SG2_G = dict(class_name="training.networks_stylegan2.Generator", z_dim=16, w_dim=16,
             mapping_kwargs=dict(num_layers=2, w_avg_beta=0.995), channel_base=128, channel_max=8,
             num_fp16_res=4, conv_clamp=256, fused_modconv_default="inference_only")
SG3_G = dict(class_name="training.networks_stylegan3.Generator", z_dim=16, w_dim=16,
             mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=8, num_fp16_res=4, conv_clamp=256,
             magnitude_ema_beta=0.5 ** (BATCH / (20 * 1e3)))
SG3R_G = {**SG3_G, "channel_base": 512, "channel_max": 16, "conv_kernel": 1, "use_radial_filters": True}
D_KW = dict(class_name="training.networks_stylegan2.Discriminator", channel_base=128, channel_max=8,
            num_fp16_res=4, conv_clamp=256, block_kwargs=dict(freeze_layers=0), mapping_kwargs={},
            epilogue_kwargs=dict(mbstd_group_size=4))
# train.py's augment_kwargs for the 'bgc' pipe, less the pixel blits (ganflow executes blits exactly where the
# reference resamples them through its filter: a deliberate departure, see models/augment.py).
AUG_GC = dict(class_name="training.augment.AugmentPipe", scale=1, rotate=1, aniso=1, xfrac=1, brightness=1,
              contrast=1, lumaflip=1, hue=1, saturation=1)
P_FIXED = 0.3

# name -> settings. 'sg2': --cfg stylegan2 (style mixing 0.9, path length 2 every 4 steps); 'sg3': G_reg_interval
# None (one Gboth phase), no path length or mixing, R with its blur. 16 steps are a whole lazy-regularization cycle
# (R1 on step 0, path length on 0, 4, 8, 12); the other cases take fewer, to keep the test fast and because
# StyleGAN3-T's float32 rounding flips Adam's step on a near-zero gradient from its 5th step on (beta1 = 0 makes
# each step about lr x sign(grad)), after which the two runs drift apart chaotically.
CASES: dict[str, dict] = {
    "sg2": dict(G=SG2_G, lr_g=LR_G, g_reg=4, pl_weight=2.0, mixing=0.9, aug=None, steps=16),
    "sg2-ada": dict(G=SG2_G, lr_g=LR_G, g_reg=4, pl_weight=2.0, mixing=0.9, aug=AUG_GC, steps=5),
    "sg3t": dict(G=SG3_G, lr_g=0.0025, g_reg=None, pl_weight=0.0, mixing=0.0, aug=None, steps=4),
    "sg3r-ada": dict(G=SG3R_G, lr_g=0.0025, g_reg=None, pl_weight=0.0, mixing=0.0, aug=AUG_GC, steps=5,
                     blur_init_sigma=10, blur_fade_kimg=BATCH * 200 / 32),
    "sg2-freezed": dict(G=SG2_G, lr_g=LR_G, g_reg=4, pl_weight=2.0, mixing=0.9, aug=None, steps=2, freezed=3),
}
# The same StyleGAN3 and StyleGAN2-ADA runs over a whole 16-step cycle, teacher-forced: the reference's state before
# every step is recorded (G, D, Adam's second moments and step count, the global generator), so the test takes each step from
# the reference's state rather than its own drifting one.
TEACHER_CASES = {"sg3t-cycle": {**CASES["sg3t"], "steps": 16}, "sg3r-ada-cycle": {**CASES["sg3r-ada"], "steps": 16},
                 "sg2-ada-cycle": {**CASES["sg2-ada"], "steps": 16}}


def _shim_pkg_resources() -> None:
    """The reference's gradfix modules import pkg_resources for parse_version only (gone from setuptools >= 81)."""
    if importlib.util.find_spec("pkg_resources") is None:
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)


def perturb(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Move every tensor off its initial constant (zero biases and noise strengths would hide a slip)."""
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not t.is_floating_point() or name.endswith(("resample_filter", "up_filter", "down_filter", "freqs",
                                                        "phases", "transform", "magnitude_ema")):
            continue
        if name.endswith("noise_strength"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.2)
        elif name.endswith("w_avg"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
        else:
            t.add_(torch.randn(t.shape, generator=gen) * 0.1 * (t.std() if t.numel() > 1 else 1))


def pack(state: dict) -> dict:
    """A state dict as one flat float32 tensor plus names and shapes (many small tensors zip poorly)."""
    state = {k: v for k, v in state.items() if v.is_floating_point()}
    return {"names": list(state), "shapes": [list(v.shape) for v in state.values()],
            "data": torch.cat([v.detach().float().flatten() for v in state.values()])}


def digest(state: dict) -> dict:
    """Per tensor [sum, projection on a fixed random direction] in float64: any change to a tensor moves one."""
    names, rows = [], []
    for k, v in state.items():
        if not v.is_floating_point():
            continue
        v = v.detach().double().flatten()
        direction = torch.randn(v.numel(), generator=torch.Generator().manual_seed(v.numel()), dtype=torch.float64)
        names.append(k)
        rows.append(torch.stack([v.sum(), v @ direction]))
    return {"names": names, "values": torch.stack(rows)}


def before_step(G, D, phases) -> dict:
    """What ganflow needs to take the next step as the reference: G and D (parameters and buffers), each Adam's
    step count and second moments (by parameter name), the global generator. Adam's first moments are left out:
    with beta1 = 0 Adam overwrites them with the step's gradient before using them."""
    state = {"G": pack(G.state_dict()), "D": pack(D.state_dict()), "rng": torch.get_rng_state()}
    for name, module in (("G", G), ("D", D)):
        opt = next(phase.opt for phase in phases if phase.module is module)
        assert all(group["betas"][0] == 0 for group in opt.param_groups)
        # Per parameter: Adam's step count (0: no state yet, the parameter has had no gradient) and second moment.
        named = list(module.named_parameters())
        state[f"opt_{name}"] = {
            "step": torch.tensor([int(opt.state[p]["step"]) if p in opt.state else 0 for _, p in named]),
            "exp_avg_sq": pack({k: opt.state[p]["exp_avg_sq"] if p in opt.state else torch.zeros_like(p)
                                for k, p in named})}
    return state


def xor_chain(rows: list[torch.Tensor]) -> torch.Tensor:
    """Exact float32 rows, each XORed bitwise with the one before and split into byte planes: the sign, exponent
    and high mantissa bits of a weight rarely change in a step, so the planes gzip well; nothing is rounded."""
    bits = torch.stack(rows).float().view(torch.int32)
    bits = torch.cat([bits[:1], bits[1:] ^ bits[:-1]])
    return bits.view(torch.uint8).reshape(len(rows), -1, 4).permute(2, 0, 1).contiguous()


def compress_teacher(states: list[dict]) -> dict:
    """Per-step states as names and shapes once, the tensors' data as xor_chain planes."""
    out: dict = {"rng": torch.stack([s["rng"] for s in states[:-1]]),
                 "opt_step": {k: torch.stack([s[k]["step"] for s in states]) for k in ("opt_G", "opt_D")}, "packs": {}}
    for key, get in (("G", lambda s: s["G"]), ("D", lambda s: s["D"]),
                     ("opt_G", lambda s: s["opt_G"]["exp_avg_sq"]), ("opt_D", lambda s: s["opt_D"]["exp_avg_sq"])):
        packs = [get(s) for s in states]
        assert all(p["names"] == packs[0]["names"] for p in packs[1:]), key
        out["packs"][key] = {"names": packs[0]["names"], "shapes": packs[0]["shapes"],
                             "planes": xor_chain([p["data"] for p in packs])}
    return out


def images() -> torch.Tensor:
    """Smooth colour images (uint8 [N, 3, RES, RES]) so D has something to tell from G's output."""
    rs = np.random.RandomState(0)
    yy, xx = np.mgrid[0:RES, 0:RES] / RES
    out = []
    for _ in range(NUM_IMAGES):
        f = rs.uniform(1, 3, size=(3, 2))
        ph = rs.uniform(0, 2 * np.pi, size=(3,))
        img = [np.sin(2 * np.pi * (f[c, 0] * xx + f[c, 1] * yy) + ph[c]) for c in range(3)]
        out.append(np.clip(np.stack(img) * 110 + 128 + rs.randn(3, RES, RES) * 8, 0, 255))
    return torch.from_numpy(np.stack(out).astype(np.uint8))


class Reports:
    """training_stats.report, captured: the loss values of each phase, as the reference reports them."""

    def __init__(self, report):
        self.report, self.values = report, {}

    def __call__(self, name, value):
        if name in ("Loss/G/loss", "Loss/D/loss", "Loss/r1_penalty", "Loss/pl_penalty"):
            self.values[name] = float(torch.as_tensor(value).detach().double().mean())
        return self.report(name, value)


def build(case: dict):
    import dnnlib

    common = dict(c_dim=0, img_resolution=RES, img_channels=3)
    g_kwargs = copy.deepcopy(case["G"])
    d_kwargs = copy.deepcopy(D_KW)
    d_kwargs["block_kwargs"]["freeze_layers"] = case.get("freezed", 0)
    G = dnnlib.util.construct_class_by_name(**g_kwargs, **common).train().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(**d_kwargs, **common).train().requires_grad_(False)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        perturb(G, gen)
        perturb(D, gen)
    return G, D


def run(case: dict, G, D, G_ema, reals_u8: torch.Tensor, ema_rampup: float | None = 0.05,
        teacher: bool = False) -> dict:
    """The reference's training_loop.py from 'Setup training phases' to 'Execute ADA heuristic', on the CPU."""
    import dnnlib
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
    from training import loss as ref_loss

    from models.data import ShuffledSampler, to_float

    conv2d_gradfix.enabled = True   # as training_loop.py (no effect on the CPU or with torch >= 1.11)
    grid_sample_gradfix.enabled = True
    reports = Reports(ref_loss.training_stats.report)
    ref_loss.training_stats.report = reports
    augment_pipe = None
    if case["aug"] is not None:
        augment_pipe = dnnlib.util.construct_class_by_name(**case["aug"]).train().requires_grad_(False)
        augment_pipe.p.copy_(torch.as_tensor(P_FIXED))
    loss = ref_loss.StyleGAN2Loss(device=torch.device("cpu"), G=G, D=D, augment_pipe=augment_pipe, r1_gamma=R1_GAMMA,
                                  style_mixing_prob=case["mixing"], pl_weight=case["pl_weight"],
                                  pl_no_weight_grad=True, blur_init_sigma=case.get("blur_init_sigma", 0),
                                  blur_fade_kimg=case.get("blur_fade_kimg", 0))
    phases = []
    for name, module, lr, reg_interval in [("G", G, case["lr_g"], case["g_reg"]), ("D", D, LR_D, 16)]:
        # train.py's betas [0,0.99]: floats here, as recent torch requires.
        opt_kwargs = dnnlib.EasyDict(class_name="torch.optim.Adam", lr=lr, betas=[0.0, 0.99], eps=1e-8)
        if reg_interval is None:
            opt = dnnlib.util.construct_class_by_name(params=module.parameters(), **opt_kwargs)
            phases += [dnnlib.EasyDict(name=name + "both", module=module, opt=opt, interval=1)]
        else:
            mb_ratio = reg_interval / (reg_interval + 1)
            opt_kwargs.lr = opt_kwargs.lr * mb_ratio
            opt_kwargs.betas = [beta ** mb_ratio for beta in opt_kwargs.betas]
            opt = dnnlib.util.construct_class_by_name(module.parameters(), **opt_kwargs)
            phases += [dnnlib.EasyDict(name=name + "main", module=module, opt=opt, interval=1)]
            phases += [dnnlib.EasyDict(name=name + "reg", module=module, opt=opt, interval=reg_interval)]

    sampler = ShuffledSampler(len(reals_u8), RUN_SEED)
    latent_rng = torch.Generator().manual_seed(RUN_SEED)
    torch.manual_seed(TORCH_SEED)
    ema_kimg = BATCH * 10 / 32
    cur_nimg, batch_idx = 0, 0
    record: dict = {"steps": [], "grads": {}}
    states = []
    for _ in range(case["steps"]):
        if teacher and batch_idx > 0:  # before step 0: the initial weights, fresh Adams, the seeded generator
            states.append(before_step(G, D, phases))
        real_img = to_float(reals_u8[sampler.take(BATCH)])
        all_gen_z = torch.randn([len(phases) * BATCH, G.z_dim], generator=latent_rng).split(BATCH)
        c = torch.zeros([BATCH, 0])
        step: dict = {"losses": {}}
        for phase, gen_z in zip(phases, all_gen_z):
            if batch_idx % phase.interval != 0:
                continue
            phase.opt.zero_grad(set_to_none=True)
            phase.module.requires_grad_(True)
            reports.values = {}
            loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_c=c, gen_z=gen_z, gen_c=c,
                                      gain=phase.interval, cur_nimg=cur_nimg)
            phase.module.requires_grad_(False)
            step["losses"][phase.name] = dict(reports.values)
            params = [param for param in phase.module.parameters() if param.grad is not None]
            if len(params) > 0:
                flat = torch.cat([param.grad.flatten() for param in params])
                torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                grads = flat.split([param.numel() for param in params])
                for param, grad in zip(params, grads):
                    param.grad = grad.reshape(param.shape)
            if batch_idx == 0:
                record["grads"][phase.name] = pack({k: p.grad for k, p in phase.module.named_parameters()
                                                    if p.grad is not None})
            phase.opt.step()
        ema_nimg = ema_kimg * 1000
        if ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
        ema_beta = 0.5 ** (BATCH / max(ema_nimg, 1e-8))
        with torch.no_grad():
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, ema_beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        cur_nimg += BATCH
        batch_idx += 1
        step["pl_mean"] = float(loss.pl_mean)
        step["digest"] = {k: digest(m.state_dict()) for k, m in (("G", G), ("D", D), ("G_ema", G_ema))}
        record["steps"].append(step)
    record["final"] = {k: pack(m.state_dict()) for k, m in (("G", G), ("D", D), ("G_ema", G_ema))}
    if teacher:
        states.append(before_step(G, D, phases))
        record["teacher"] = compress_teacher(states)
    ref_loss.training_stats.report = reports.report
    return record


def record_case(name: str) -> dict:
    case: dict = {**CASES, **TEACHER_CASES}[name]
    torch.manual_seed(123)
    G, D = build(case)
    init = {"G": pack(G.state_dict()), "D": pack(D.state_dict())}
    reals = images()
    out = run(case, G, D, copy.deepcopy(G).eval(), reals, teacher=name in TEACHER_CASES)
    if name in TEACHER_CASES:  # step 0's gradients are checked by the free-running case; G, D: the last state
        del out["grads"]
        out["final"] = {"G_ema": out["final"]["G_ema"]}
    settings = {k: v for k, v in case.items() if k not in ("G", "aug")}
    settings.update(G=case["G"], augment=None if case["aug"] is None else {k: v for k, v in case["aug"].items()
                                                                          if k != "class_name"},
                    augment_p=P_FIXED if case["aug"] else 0.0, batch=BATCH, resolution=RES, r1_gamma=R1_GAMMA,
                    lr_d=LR_D, torch_seed=TORCH_SEED, run_seed=RUN_SEED)
    return {"settings": settings, "init": init, "images": reals, **out}


def record_transfer() -> dict:
    """The reference's --resume: a network pickle's G, D and G_ema copied in (misc.copy_params_and_buffers), no
    EMA ramp-up; one step with all four phases."""
    import legacy
    from torch_utils import misc

    pkl = HERE.parent / "nvidia_pickles" / "stylegan2-sg3.pkl.gz"
    data = legacy.load_network_pkl(io.BytesIO(gzip.decompress(pkl.read_bytes())))
    G = data["G"].train().requires_grad_(False)
    D = data["D"].train().requires_grad_(False)
    G_ema = data["G_ema"].eval()
    for name, module in (("G", G), ("D", D), ("G_ema", G_ema)):
        misc.copy_params_and_buffers(data[name], module, require_all=False)
    case = dict(lr_g=LR_G, g_reg=4, pl_weight=2.0, mixing=0.9, aug=None, steps=1)
    reals = images()
    out = run(case, G, D, G_ema, reals, ema_rampup=None)
    return {"settings": {**case, "pickle": pkl.name, "ema_rampup": None}, "images": reals, **out}


def record_ada() -> dict:
    """ADA's p over 64 steps from recorded D(real) logits, by the reference's lines: a training_stats Collector of
    'Loss/signs/real' (reported by Dmain every step and by Dreg on R1 steps too), updated every ada_interval steps."""
    from torch_utils import training_stats

    gen = torch.Generator().manual_seed(3)
    ada_target, ada_interval, ada_kimg = 0.6, 4, 0.5
    collector = training_stats.Collector(regex="Loss/signs/real")
    p = torch.zeros([])
    logits, ps = [], []
    for batch_idx in range(64):
        # Drift from mostly negative to mostly positive logits, so p goes down (clamped at 0), then up.
        shift = -1.0 + 2.5 * batch_idx / 63
        step = [torch.randn([BATCH, 1], generator=gen) + shift]
        if batch_idx % 16 == 0:
            step.append(torch.randn([BATCH, 1], generator=gen) + shift)  # Dreg's own pass over the reals
        for x in step:
            training_stats.report("Loss/signs/real", x.sign())
        logits.append(torch.stack(step) if len(step) > 1 else step[0][None])
        if (batch_idx + 1) % ada_interval == 0:
            collector.update()
            adjust = np.sign(collector["Loss/signs/real"] - ada_target) * (BATCH * ada_interval) / (ada_kimg * 1000)
            p.copy_((p + adjust).max(torch.zeros([])))
        ps.append(float(p))
    return {"settings": dict(target=ada_target, interval=ada_interval, ada_kimg=ada_kimg, batch=BATCH),
            "logits": logits, "p": torch.tensor(ps, dtype=torch.float64)}


def save(name: str, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    path = HERE / f"{name}.pt.gz"
    path.write_bytes(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))
    print(f"{path.name}: {path.stat().st_size / 1024:.1f} kB")


def main() -> None:
    _shim_pkg_resources()
    torch.set_num_threads(1)  # a deterministic summation order
    only = sys.argv[1:]
    for name in [*CASES, *TEACHER_CASES]:
        if not only or name in only:
            save(name, record_case(name))
    if not only or "transfer" in only:
        save("transfer", record_transfer())
    if not only or "ada" in only:
        save("ada", record_ada())


if __name__ == "__main__":
    main()
