"""Training speed against this machine's own matmul peak, in one run.

1. fp32 matmul FLOP/s (torch.mm, large square), the reference;
2. full training steps (D step with lazy R1, G step, EMA) at 64² and 128², img/s;
3. the FLOPs of those steps (torch.utils.flop_counter) and the fraction of the matmul peak they reach.

Usage: python bench/train_step.py [--arch stylegan2 pggan stylegan3-t stylegan3-r] [--resolutions 64 128]
                                  [--device cpu|cuda] [--out bench/results/train_step.json]
On a GPU: --device cuda --resolutions 256 --batch 32 gives s/kimg to set beside stylegan2-ada-pytorch's
published one-V100 figure at 256² (21.6-24.2 s/kimg); --arch stylegan3-t stylegan3-r --device cuda
--resolutions 256 --batch 32 beside stylegan3's one-A100 figures at 256² (T 49.8, R 56.7 s/kimg; its
compiled CUDA ops, where ganflow runs the reference's plain-PyTorch filtered leaky ReLU).

--memory: one G training step (G forward, D on the fakes, the non-saturating loss, backward; no R1) per network,
each in a fresh process of its own, one at a time, with StyleGAN3's filtered leaky ReLU in its plain-autograd
reference form ("reference") and in the form that keeps one byte per upsampled sample ("saving"), in the same
run: the increase of the process's peak RSS over the step and its time (bench/results/train_step_memory.json).
  python bench/train_step.py --memory [--arch stylegan3-t stylegan3-r stylegan2 pggan] --resolutions 64 --batch 2

--reference DIR: NVIDIA's training step (a scratch copy of NVlabs/stylegan3) beside ganflow's, see
bench/side_by_side.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.trainer import TrainConfig, Trainer


class _Untracked:
    """Stands in for FlopCounterMode's module tracker: its backward hooks fail inside autograd.grad on a leaf
    (WGAN-GP's interpolates), and only the total is needed here."""
    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def total_flops_counter() -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _Untracked()  # type: ignore[assignment]  # a stand-in that tracks nothing
    return counter


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str = "cpu", n: int = 2048, repeat: int = 10) -> float:
    n = n if device == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def training_speed(arch: str, resolution: int, batch: int, steps: int, tmp: Path, channels_last: bool,
                   device: str = "cpu") -> dict:
    images = (torch.rand(64, 3, resolution, resolution) * 255).to(torch.uint8)
    # PGGAN: grow to the full resolution within the warm-up (one image per fade-in and per stage), so the
    # timed steps run the whole network, as training does for most of its images.
    grow: dict = dict(fade_kimg=0.001, stabilize_kimg=0.001, net={"channels_last": channels_last}) if arch == "pggan" else {}
    cfg = TrainConfig(arch=arch, resolution=resolution, batch=batch, snapshot_kimg=1e9, ada_target=0.0,
                      r1_interval=16, **grow)
    trainer = Trainer(cfg, images, tmp / f"{arch}-{resolution}", device=device)
    # Measure steps, not checkpoint writes (bench/ checkpoint overhead is separate)
    trainer.snapshot = lambda: None  # type: ignore[method-assign,assignment,return-value]
    warm = 2 * batch + (4 * resolution.bit_length() if arch == "pggan" else 0)
    trainer.train(warm / 1000)
    with total_flops_counter() as counter:
        trainer.train((warm + batch) / 1000)  # one step, counted (includes the step-0 R1 pattern's share below)
    flops_per_step = counter.get_total_flops()
    start_nimg = trainer.nimg
    _sync(device)
    t = time.perf_counter()
    trainer.train((start_nimg + steps * batch) / 1000)
    _sync(device)
    seconds = time.perf_counter() - t
    img_s = steps * batch / seconds
    return {"arch": arch, "resolution": resolution, "batch": batch, "channels_last": channels_last, "steps": steps, "seconds": round(seconds, 3),
            "img_per_s": round(img_s, 3), "s_per_kimg": round(1000 / img_s, 2), "flops_per_step": flops_per_step,
            "device": device, "amp": trainer.amp,
            "flop_per_s": flops_per_step * steps / seconds}


# --------------------------------------------------------------------------- --memory: one G step's peak RSS

FILTERED_LRELU_FORMS = ("reference", "saving")  # the plain-autograd composition; the op that keeps a byte code


def _rss_kb(field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS, so the peak that follows is the step's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def one_g_step(arch: str, resolution: int, batch: int, form: str, steps: int = 2) -> dict:
    """Build the full-width networks, then time `steps` G steps; the first one's peak RSS increase is the
    step's memory (later steps reuse what the allocator kept). Run in a fresh process (see --memory)."""
    import gc

    import models.stylegan3
    from models import losses
    from models.arch import build_arch
    from models.filtered_lrelu import filtered_lrelu_reference

    if form == "reference":  # this process only: the layers call the plain-autograd form
        models.stylegan3.filtered_lrelu = filtered_lrelu_reference  # the same signature
    grow: dict = dict(fade_kimg=0.001, stabilize_kimg=0.001) if arch == "pggan" else {}
    cfg = TrainConfig(arch=arch, resolution=resolution, batch=batch, ada_target=0.0, **grow)
    torch.manual_seed(0)
    a = build_arch(cfg)
    nimg = 10 ** 7  # past PGGAN's growth: its whole network, as most of its training
    z = torch.randn(batch, a.z_dim)
    gc.collect()
    rss0 = _rss_kb("VmRSS")
    reset = _reset_peak_rss()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fakes = a.generate(a.G, z, nimg, update_stats=False)
        loss = losses.g_nonsaturating_loss(a.discriminate(a.D, fakes, nimg).float())
        loss.backward()
        times.append(time.perf_counter() - t)
        if len(times) == 1:
            peak = _rss_kb("VmHWM") if reset else 0
        a.G.zero_grad(set_to_none=True)
        a.D.zero_grad(set_to_none=True)
        del fakes, loss
    return {"arch": arch, "resolution": resolution, "batch": batch, "filtered_lrelu": form,
            "rss_before_mb": round(rss0 / 1024), "peak_rss_increase_mb": round((peak - rss0) / 1024) if reset else None,
            "step_seconds": [round(t, 2) for t in times], "threads": torch.get_num_threads()}


def memory_rows(archs: list[str], resolution: int, batch: int, steps: int) -> list[dict]:
    """Each (network, form) in a fresh python process, one after another: a process's peak RSS never falls,
    so one process per measurement, and never two big ones at once on a shared machine."""
    rows = []
    for arch in archs:
        for form in FILTERED_LRELU_FORMS if arch.startswith("stylegan3") else ("reference",):
            cmd = [sys.executable, __file__, "--one-g-step", arch, form, "--resolutions", str(resolution),
                   "--batch", str(batch), "--steps", str(steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            rows.append(row)
            print(f"{arch:12s} {form:9s} {resolution}² batch {batch}: peak RSS +{row['peak_rss_increase_mb']} MB, "
                  f"step {row['step_seconds']} s", flush=True)
    return rows


def memory_summary(rows: list[dict]) -> list[dict]:
    """saving / reference, per StyleGAN3 network: peak RSS increase and the time of the later steps (the first
    pays one-time costs)."""
    out = []
    for arch in sorted({r["arch"] for r in rows if r["filtered_lrelu"] == "saving"}):
        ref, new = (next(r for r in rows if r["arch"] == arch and r["filtered_lrelu"] == f) for f in FILTERED_LRELU_FORMS)
        later = lambda r: min(r["step_seconds"][1:] or r["step_seconds"])  # noqa: E731
        out.append({"arch": arch, "memory_ratio": round(new["peak_rss_increase_mb"] / ref["peak_rss_increase_mb"], 3),
                    "time_ratio": round(later(new) / later(ref), 3),
                    "time_ratio_first_step": round(new["step_seconds"][0] / ref["step_seconds"][0], 3),
                    "targets": {"memory_ratio": 0.5, "time_ratio": 1.1}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["stylegan2", "pggan"])
    ap.add_argument("--resolutions", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA training runs in bf16 autocast)")
    ap.add_argument("--out", default="bench/results/train_step.json")
    ap.add_argument("--memory", action="store_true", help="peak RSS and time of one G step, each network and "
                    "filtered-leaky-ReLU form in a process of its own")
    ap.add_argument("--one-g-step", nargs=2, metavar=("ARCH", "FORM"), help=argparse.SUPPRESS)  # --memory's child
    ap.add_argument("--reference", metavar="DIR", help="a scratch copy of NVlabs/stylegan3: time its training "
                    "step beside ganflow's (bench/side_by_side.py)")
    side = ap.add_argument_group("--reference (bench/side_by_side.py)")
    side.add_argument("--batch-gpu", type=int, default=0, help="images per GPU pass (the reference's --batch-gpu); "
                      "0 = the whole batch")
    side.add_argument("--precision", choices=("both", "mixed", "fp32"), default="both",
                      help="each side's default mixed precision, fp32, or both")
    side.add_argument("--p", type=float, default=0.2, help="the augment pipe's fixed probability on both sides")
    side.add_argument("--reps", type=int, default=2, help="timed repetitions of each kind of step in the cycle")
    side.add_argument("--nimg", type=int, default=10 ** 7, help="images seen so far (past StyleGAN3-R's blur)")
    side.add_argument("--cbase", type=int, default=0, help="channel_base of both sides' networks (0 = the arch's)")
    side.add_argument("--cmax", type=int, default=0, help="channel_max of both sides' networks (0 = the arch's)")
    args = ap.parse_args()
    if args.one_g_step:
        arch, form = args.one_g_step
        print(json.dumps(one_g_step(arch, args.resolutions[0], args.batch, form, steps=args.steps)))
        return
    if args.memory:
        rows = memory_rows(args.arch, args.resolutions[0], args.batch, args.steps)
        result = {"what": "one G step: G forward, D on the fakes, non-saturating loss, backward (no R1)",
                  "memory": "increase of the process's peak RSS (VmHWM, reset before the step) over its RSS before",
                  "cpus": os.cpu_count(), "runs": rows, "summary": memory_summary(rows)}
        out = args.out if args.out != ap.get_default("out") else "bench/results/train_step_memory.json"
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result["summary"], indent=2))
        print(f"wrote {out}")
        return
    if args.reference:
        from side_by_side import main as side_by_side  # bench/side_by_side.py, beside this script

        if args.out == ap.get_default("out"):
            args.out = "bench/results/side_by_side.json"
        side_by_side(args)
        return
    import tempfile

    peak = matmul_peak(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            for res in args.resolutions:
                # PGGAN's convolutions can run channels_last: measure both layouts, keep both rows.
                for channels_last in ((False, True) if arch == "pggan" else (False,)):
                    row = training_speed(arch, res, args.batch, args.steps, Path(tmp), channels_last, args.device)
                    row["fraction_of_matmul_peak"] = round(row["flop_per_s"] / peak, 3)
                    rows.append(row)
                    print(f"{arch:10s} {res:4d}² {'NHWC' if channels_last else 'NCHW'} {row['img_per_s']:8.2f} img/s "
                          f"{row['s_per_kimg']:8.1f} s/kimg {row['flop_per_s'] / 1e9:8.1f} GFLOP/s "
                          f"{100 * row['fraction_of_matmul_peak']:5.1f}% of fp32 matmul peak")
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    result = {"matmul_peak_flop_per_s": peak, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "target_fraction": 0.30, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
