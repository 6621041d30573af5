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
"""
from __future__ import annotations

import argparse
import json
import os
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["stylegan2", "pggan"])
    ap.add_argument("--resolutions", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on CUDA training runs in bf16 autocast)")
    ap.add_argument("--out", default="bench/results/train_step.json")
    args = ap.parse_args()
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
