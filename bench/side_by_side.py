"""NVIDIA's training step beside ganflow's, on the same device in one run: s/kimg, peak memory and the ratios.

`python bench/train_step.py --device cuda --reference DIR --arch stylegan3-t --resolutions 256 --batch 32
--batch-gpu 16` runs both, each in its default mixed precision and in fp32. DIR is a scratch copy of
NVlabs/stylegan3 (its StyleGAN2 and StyleGAN3 networks, `training/loss.py` StyleGAN2Loss, `training/augment.py`,
its compiled CUDA ops through its own loader); it is imported from DIR at run time, never a dependency.

What each side runs, for one training step (32 images):
- NVIDIA: its training loop's body, with its phases (Gmain, Greg every 4 steps when path length is on, Dmain,
  Dreg every 16 steps), each accumulating over batch-gpu rounds, the gradient flattening and nan_to_num, Adam, the
  G_ema update; its cudnn/TF32 settings and gradfix ops on; its augment pipe ('bgc') at a fixed p. Its default
  precision is fp16 in the 4 highest resolutions with clamping at 256; `--fp32` as its train.py (no fp16, no clamp).
- ganflow: Trainer.train() over the same step (D step with lazy R1, G step with lazy path length, EMA), ADA's
  pipe at the same fixed p; default bf16 autocast on CUDA (`amp: auto`), fp32 = `amp: off`. The per-GPU batch
  is train.batch_gpu (gradient accumulation, as NVIDIA's --batch-gpu).
Both take the same configuration (ganflow's networks for the arch: widths, mapping depth, mbstd group, R1 gamma,
EMA, lr) and the same random uint8 images in memory (no data loading on either side; ganflow's Trainer copies
its batch to the device as in training), at the same image count, past StyleGAN3-R's discriminator blur (the
steady state of a run).

Timing: a lazy-regularization cycle is 16 steps (R1 every 16, path length every 4): each kind of step in it (R1
and path length, path length only, neither) is run once to warm up (cudnn autotuning, the reference's op
compilation), then timed `--reps` times, and the cycle's time is the weighted sum of the kinds: the s/kimg of a
whole cycle without running all 16 steps on the slow side. Peak memory: torch.cuda.max_memory_allocated over
the timed steps (tensors only, not the allocator's cache), reset between sides.
"""
from __future__ import annotations

import copy
import gc
import importlib
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

from models.trainer import TrainConfig, Trainer

CYCLE = 16  # steps of a lazy-regularization cycle: lcm of the R1 (16) and path-length (4) intervals
R1_INTERVAL, PL_INTERVAL = 16, 4


# --------------------------------------------------------------------------- the reference, imported from DIR


def import_reference(ref_dir: str) -> types.SimpleNamespace:
    """NVIDIA's modules from a scratch copy. Its ops import pkg_resources.parse_version, which new setuptools
    no longer ship: a stand-in with packaging's parse (torch vendors packaging) is put in first."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            for name in ("packaging.version", "torch._vendor.packaging.version"):
                try:
                    parse = importlib.import_module(name).parse
                except ImportError:
                    continue
                sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)  # type: ignore[assignment]
                break
    sys.path.insert(0, str(Path(ref_dir).resolve()))
    import dnnlib
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
    from training import augment, loss, networks_stylegan2, networks_stylegan3

    return types.SimpleNamespace(dnnlib=dnnlib, conv2d_gradfix=conv2d_gradfix, grid_sample_gradfix=grid_sample_gradfix,
                                 augment=augment, loss=loss, sg2=networks_stylegan2, sg3=networks_stylegan3)


BGC = dict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1, lumaflip=1,
           hue=1, saturation=1)  # train.py's default augmentation ('bgc')


class ReferenceStep:
    """NVIDIA's training loop body (training/training_loop.py), on ganflow's configuration of `arch`."""

    def __init__(self, ref, trainer: Trainer, batch_gpu: int, fp32: bool, p: float, device: torch.device):
        a: Any = trainer.arch  # StyleGAN2Arch or StyleGAN3Arch: their `net` (and `d_net`) configs are read
        cfg = trainer.cfg
        self.device, self.batch, self.batch_gpu = device, a.batch, batch_gpu
        precision: dict[str, Any] = dict(num_fp16_res=0, conv_clamp=None) if fp32 else dict(num_fp16_res=4,
                                                                                               conv_clamp=256)
        g_net = a.net  # ganflow's G config: StyleGAN2Config or StyleGAN3Config
        d_net = getattr(a, "d_net", g_net)  # StyleGAN3's D config (StyleGAN2's nets share one)
        common = dict(c_dim=0, img_resolution=cfg.resolution, img_channels=3)
        torch.manual_seed(0)
        if cfg.arch == "stylegan2":
            self.G = ref.sg2.Generator(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=g_net.mapping_layers),
                                       channel_base=g_net.channel_base, channel_max=g_net.channel_max,
                                       fused_modconv_default="inference_only", **precision, **common)
        else:
            self.G = ref.sg3.Generator(z_dim=512, w_dim=512, mapping_kwargs=dict(num_layers=g_net.mapping_layers),
                                       channel_base=g_net.channel_base, channel_max=g_net.channel_max,
                                       magnitude_ema_beta=g_net.magnitude_ema_beta, conv_kernel=g_net.conv_kernel,
                                       use_radial_filters=g_net.use_radial_filters, **precision, **common)
        self.D = ref.sg2.Discriminator(channel_base=d_net.channel_base, channel_max=d_net.channel_max,
                                       block_kwargs=dict(freeze_layers=0), mapping_kwargs={},
                                       epilogue_kwargs=dict(mbstd_group_size=min(d_net.mbstd_group, batch_gpu)),
                                       **precision, **common)
        self.G = self.G.train().requires_grad_(False).to(device)
        self.D = self.D.train().requires_grad_(False).to(device)
        self.G_ema = copy.deepcopy(self.G).eval()
        self.augment_pipe = ref.augment.AugmentPipe(**BGC).train().requires_grad_(False).to(device)
        self.augment_pipe.p.copy_(torch.as_tensor(p))
        r = cfg.arch == "stylegan3-r"
        self.loss = ref.loss.StyleGAN2Loss(
            device=device, G=self.G, D=self.D, augment_pipe=self.augment_pipe, r1_gamma=a.r1_gamma,
            style_mixing_prob=a.style_mixing, pl_weight=a.pl_weight, pl_no_weight_grad=cfg.arch == "stylegan2",
            blur_init_sigma=10 if r else 0, blur_fade_kimg=a.batch * 200 / 32 if r else 0)
        self.phases = []
        g_reg = PL_INTERVAL if a.pl_weight > 0 else None
        for name, module, reg_interval in (("G", self.G, g_reg), ("D", self.D, R1_INTERVAL)):
            if reg_interval is None:
                opt = torch.optim.Adam(module.parameters(), lr=a.lr, betas=(0.0, 0.99), eps=1e-8)
                self.phases.append((name + "both", module, opt, 1))
            else:
                c = reg_interval / (reg_interval + 1)
                opt = torch.optim.Adam(module.parameters(), lr=a.lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
                self.phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, reg_interval)]
        self.ema_kimg = a.ema_kimg
        self.misc = sys.modules["torch_utils.misc"]

    def step(self, batch_idx: int, reals_u8: torch.Tensor, cur_nimg: int) -> None:
        """training_loop.py's loop body for one batch (without its stats ticks and snapshots)."""
        real = (reals_u8.to(torch.float32) / 127.5 - 1).split(self.batch_gpu)
        real_c = torch.zeros([self.batch, 0], device=self.device).split(self.batch_gpu)
        all_z = torch.randn([len(self.phases) * self.batch, 512], device=self.device)
        all_z = [z.split(self.batch_gpu) for z in all_z.split(self.batch)]
        for (name, module, opt, interval), phase_z in zip(self.phases, all_z):
            if batch_idx % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            for real_img, c, z in zip(real, real_c, phase_z):
                self.loss.accumulate_gradients(phase=name, real_img=real_img, real_c=c, gen_z=z, gen_c=c,
                                               gain=interval, cur_nimg=cur_nimg)
            module.requires_grad_(False)
            params = [p for p in module.parameters() if p.grad is not None]
            if params:
                flat = torch.cat([p.grad.flatten() for p in params])
                self.misc.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                for p, g in zip(params, flat.split([p.numel() for p in params])):
                    p.grad = g.reshape(p.shape)
            opt.step()
        ema_beta = 0.5 ** (self.batch / max(min(self.ema_kimg * 1000, cur_nimg * 0.05), 1e-8))
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.copy_(p.lerp(p_ema, ema_beta))
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)


# --------------------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_kinds(pl_on: bool) -> list[tuple[int, int]]:
    """(a cycle position with that kind of step, how many of the cycle's steps are of that kind)."""
    counts: dict[tuple[bool, bool], list[int]] = {}
    for i in range(CYCLE):
        counts.setdefault((i % R1_INTERVAL == 0, pl_on and i % PL_INTERVAL == 0), []).append(i)
    return [(positions[1] if len(positions) > 1 else positions[0], len(positions)) for positions in counts.values()]


def time_cycle(run_step, kinds: list[tuple[int, int]], reps: int, device: torch.device) -> dict:
    """Warm each kind of step once, then time it `reps` times; the cycle's time weights each kind by its count."""
    per_kind: dict[int, dict[str, Any]] = {}
    for position, _ in kinds:
        run_step(position)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for position, count in kinds:
        times = []
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            run_step(position)
            _sync(device)
            times.append(time.perf_counter() - t)
        per_kind[position] = {"count_in_cycle": count, "seconds": [round(x, 4) for x in times]}
    cycle = sum(v["count_in_cycle"] * sum(v["seconds"]) / len(v["seconds"]) for v in per_kind.values())
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"steps_by_cycle_position": per_kind, "cycle_seconds": round(cycle, 3),
            "peak_memory_gib": None if peak is None else round(peak / 2 ** 30, 3)}


def ganflow_trainer(arch: str, resolution: int, batch: int, batch_gpu: int, net: dict, amp: str, p: float,
                    images: torch.Tensor, tmp: Path, device: torch.device) -> Trainer:
    cfg = TrainConfig(arch=arch, resolution=resolution, batch=batch, batch_gpu=batch_gpu, snapshot_kimg=1e9,
                      ada_target=0.6, ada_interval=10 ** 9, r1_interval=R1_INTERVAL, pl_interval=PL_INTERVAL,
                      amp=amp, net=net)
    trainer = Trainer(cfg, images, tmp, device=device)
    trainer.snapshot = lambda: tmp  # type: ignore[method-assign]  # time steps, not checkpoint writes
    assert trainer.augment is not None
    trainer.augment.p.fill_(p)  # ada_interval 1e9: p stays fixed, as the reference's --aug=fixed
    return trainer


def run_config(ref, arch: str, resolution: int, batch: int, batch_gpu: int, net: dict, fp32: bool, p: float,
               reps: int, device: torch.device, nimg: int) -> dict:
    """One configuration at one precision: ganflow's step and NVIDIA's, one after the other in this process."""
    images = (torch.rand(batch * 4, 3, resolution, resolution) * 255).to(torch.uint8)
    out: dict = {"arch": arch, "resolution": resolution, "batch": batch, "batch_gpu": batch_gpu,
                 "precision": "fp32" if fp32 else "default mixed"}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ganflow_trainer(arch, resolution, batch, batch_gpu, net, "off" if fp32 else "auto", p, images,
                                  Path(tmp), device)
        kinds = step_kinds(trainer.arch.pl_weight > 0)
        out["ganflow"] = _time_ganflow(trainer, kinds, reps, device, nimg)
        reference = ReferenceStep(ref, trainer, batch_gpu, fp32, p, device)  # ganflow's configuration
    trainer = None  # freed before the reference runs
    _free(device)
    out["nvidia"] = _time_reference(ref, reference, images[:batch].to(device), kinds, reps, device, nimg)
    reference = None
    _free(device)
    g, n = out["ganflow"], out["nvidia"]
    if "s_per_kimg" in g and "s_per_kimg" in n:
        out["ratio_s_per_kimg"] = round(g["s_per_kimg"] / n["s_per_kimg"], 3)  # target <= 1.0 (aim 0.8)
        if g["peak_memory_gib"] and n["peak_memory_gib"]:
            out["ratio_peak_memory"] = round(g["peak_memory_gib"] / n["peak_memory_gib"], 3)  # target <= 1.25
    return out


def _time_ganflow(trainer: Trainer, kinds: list[tuple[int, int]], reps: int, device: torch.device,
                  nimg: int) -> dict:
    batch = trainer.arch.batch

    def step(position: int) -> None:
        trainer.step, trainer.nimg = position, nimg
        trainer.train((nimg + batch) / 1000)

    result = _measured(lambda: time_cycle(step, kinds, reps, device), batch)
    result.update(amp=trainer.amp, batch=batch, batch_gpu=trainer.cfg.batch_gpu or batch)
    return result


def _time_reference(ref, reference: ReferenceStep, reals: torch.Tensor, kinds: list[tuple[int, int]], reps: int,
                    device: torch.device, nimg: int) -> dict:
    torch.backends.cudnn.benchmark = True  # the reference's training loop sets these
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    ref.conv2d_gradfix.enabled = ref.grid_sample_gradfix.enabled = True
    gradfix_note = _check_grid_sample_gradfix(ref, device)
    try:
        result = _measured(lambda: time_cycle(lambda i: reference.step(i, reals, nimg), kinds, reps, device),
                           reference.batch)
        if gradfix_note:
            result["note"] = gradfix_note
        return result
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults again


def _check_grid_sample_gradfix(ref, device: torch.device) -> str | None:
    """The reference's grid_sample_gradfix calls a private aten op that newer torch may have changed; R1 through
    its augment pipe needs it. Tried once on a tiny input: if it fails, torch's own grid_sample is used, and said."""
    x = torch.randn(1, 1, 4, 4, device=device, requires_grad=True)
    grid = torch.rand(1, 4, 4, 2, device=device) * 2 - 1
    try:
        y = ref.grid_sample_gradfix.grid_sample(x, grid)
        (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        g.square().sum().backward()
        return None
    except Exception as e:  # noqa: BLE001
        ref.grid_sample_gradfix.enabled = False
        return f"the reference's grid_sample_gradfix failed on this torch ({type(e).__name__}: {str(e)[:150]}): off"


def _measured(fn, batch: int) -> dict:
    try:
        r = fn()
    except Exception as e:  # noqa: BLE001  (out of memory, a reference op that did not compile: a result too)
        _free(torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    r["s_per_kimg"] = round(r["cycle_seconds"] / (CYCLE * batch) * 1000, 3)
    return r


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(args) -> None:
    """bench/train_step.py --reference DIR: every --arch at --resolutions[0], both precisions (or --precision)."""
    device = torch.device(args.device)
    ref = import_reference(args.reference)
    net = {k: v for k, v in (("channel_base", args.cbase), ("channel_max", args.cmax)) if v}
    rows = []
    for arch in args.arch:
        batch_gpu = args.batch_gpu or args.batch
        for fp32 in {"both": (False, True), "mixed": (False,), "fp32": (True,)}[args.precision]:
            row = run_config(ref, arch, args.resolutions[0], args.batch, batch_gpu, net, fp32, args.p, args.reps,
                             device, args.nimg)
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("arch", "precision", "ratio_s_per_kimg", "ratio_peak_memory")}),
                  {side: {k: row[side].get(k) for k in ("s_per_kimg", "peak_memory_gib", "error")}
                   for side in ("ganflow", "nvidia")}, flush=True)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "reference": args.reference, "cpus": os.cpu_count(),
              "targets": {"ratio_s_per_kimg": 1.0, "ratio_peak_memory": 1.25}, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


# --------------------------------------------------------------------------- the ops, on the device


def check_ops(ref_dir: str, device: torch.device, batch: int = 4, resolution: int = 256) -> dict:
    """ganflow's filtered leaky ReLU on the device beside its plain-autograd form (the oracle) and NVIDIA's
    compiled op, on every layer of full-width StyleGAN3-T and -R generators: the largest difference of the
    output and of the gradients (relative to the oracle's largest magnitude), and each form's forward+backward
    time and peak memory. Also compiles the reference's plugins before the timed runs."""
    import_reference(ref_dir)
    nv = importlib.import_module("torch_utils.ops.filtered_lrelu")
    from models.filtered_lrelu import filtered_lrelu, filtered_lrelu_reference
    from models.stylegan3 import Generator, preset

    forms = {"ganflow": filtered_lrelu, "reference_form": filtered_lrelu_reference,
             "nvidia_cuda": lambda x, fu, fd, b, up, down, padding, gain, slope, clamp: nv.filtered_lrelu(
                 x, fu, fd, b, up, down, padding, gain, slope, clamp, impl="cuda" if device.type == "cuda" else "ref")}
    rows = []
    for kind in ("stylegan3-t", "stylegan3-r"):
        torch.manual_seed(0)
        G = Generator(preset(resolution, kind)).to(device)
        for name in G.synthesis.layer_names:
            L = getattr(G.synthesis, name)
            gain, slope = (1.0, 1.0) if L.is_torgb else (2 ** 0.5, 0.2)
            size = L.in_size + L.conv_kernel - 1
            x = torch.randn(batch, L.out_channels, size, size, device=device) * 4
            b = torch.randn(L.out_channels, device=device)
            args = (L.up_filter, L.down_filter, L.up_factor, L.down_factor, L.padding, gain, slope, L.conv_clamp)
            row: dict[str, Any] = {"arch": kind, "layer": name, "input": list(x.shape)}
            results = {}
            for form_name, form in forms.items():
                try:
                    results[form_name] = _run_op(form, x, b, args, device)
                except Exception as e:  # noqa: BLE001  (a compile failure of the reference is a result too)
                    row[form_name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            oracle = results.get("reference_form")
            for form_name, r in results.items():
                row[form_name] = {"ms": r["ms"], "peak_mib": r["peak_mib"]}
                if oracle is not None and form_name != "reference_form":
                    row[form_name]["max_rel_diff"] = {
                        k: float((r[k] - oracle[k]).abs().max() / oracle[k].abs().max().clamp_min(1e-30))
                        for k in ("y", "dx", "db")}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del G
        _free(device)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "batch": batch,
            "resolution": resolution, "layers": rows}


def _run_op(form, x: torch.Tensor, b: torch.Tensor, args: tuple, device: torch.device) -> dict:
    fu, fd, up, down, padding, gain, slope, clamp = args
    x = x.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    r = None
    for _ in range(2):  # a warm-up call first (compilation, autotuning), then the measured one
        _free(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        _sync(device)
        t = time.perf_counter()
        y = form(x, fu, fd, b, up, down, padding, gain, slope, clamp)
        if r is None:  # the same incoming gradient for every form
            r = torch.randn(y.shape, generator=torch.Generator(device).manual_seed(1), device=device).to(y.dtype)
        dx, db = torch.autograd.grad((y * r).sum(), [x, b])
        _sync(device)
        ms = (time.perf_counter() - t) * 1000
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20 if device.type == "cuda" else None
    return {"y": y.detach().float(), "dx": dx.float(), "db": db.float(), "ms": round(ms, 3),
            "peak_mib": None if peak is None else round(peak, 1)}


if __name__ == "__main__":  # python bench/side_by_side.py --check-ops DIR [--device cuda] [--out FILE]
    import argparse

    ap = argparse.ArgumentParser(description="ganflow's filtered leaky ReLU beside NVIDIA's compiled op")
    ap.add_argument("--check-ops", metavar="DIR", required=True, help="a scratch copy of NVlabs/stylegan3")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--out", default="bench/results/filtered_lrelu_ops.json")
    a = ap.parse_args()
    result = check_ops(a.check_ops, torch.device(a.device), a.batch, a.resolution)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {a.out}")
