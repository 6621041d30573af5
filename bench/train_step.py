"""Training speed against this machine's own matmul peak, in one run.

1. fp32 matmul FLOP/s (torch.mm, large square), the reference;
2. full training steps (D step with lazy R1, G step, EMA) at 64² and 128², img/s;
3. the FLOPs of those steps (torch.utils.flop_counter) and the fraction of the matmul peak they reach.

Usage: python bench/train_step.py [--arch stylegan2] [--resolutions 64 128] [--out bench/results/train_step.json]
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


def matmul_peak(n: int = 2048, repeat: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def training_speed(arch: str, resolution: int, batch: int, steps: int, tmp: Path) -> dict:
    images = (torch.rand(64, 3, resolution, resolution) * 255).to(torch.uint8)
    cfg = TrainConfig(arch=arch, resolution=resolution, batch=batch, snapshot_kimg=1e9, ada_target=0.0,
                      r1_interval=16)
    trainer = Trainer(cfg, images, tmp / f"{arch}-{resolution}")
    trainer.snapshot = lambda: None  # measure steps, not checkpoint writes (bench/ checkpoint overhead is separate)
    warm = 2 * batch
    trainer.train(warm / 1000)
    with FlopCounterMode(display=False) as counter:
        trainer.train((warm + batch) / 1000)  # one step, counted (includes the step-0 R1 pattern's share below)
    flops_per_step = counter.get_total_flops()
    start_nimg = trainer.nimg
    t = time.perf_counter()
    trainer.train((start_nimg + steps * batch) / 1000)
    seconds = time.perf_counter() - t
    img_s = steps * batch / seconds
    return {"arch": arch, "resolution": resolution, "batch": batch, "steps": steps, "seconds": round(seconds, 3),
            "img_per_s": round(img_s, 3), "flops_per_step": flops_per_step,
            "flop_per_s": flops_per_step * steps / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["stylegan2"])
    ap.add_argument("--resolutions", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", default="bench/results/train_step.json")
    args = ap.parse_args()
    import tempfile

    peak = matmul_peak()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch:
            for res in args.resolutions:
                row = training_speed(arch, res, args.batch, args.steps, Path(tmp))
                row["fraction_of_matmul_peak"] = round(row["flop_per_s"] / peak, 3)
                rows.append(row)
                print(f"{arch:10s} {res:4d}²  {row['img_per_s']:7.2f} img/s  "
                      f"{row['flop_per_s'] / 1e9:7.1f} GFLOP/s  {100 * row['fraction_of_matmul_peak']:5.1f}% of peak")
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    result = {"matmul_peak_flop_per_s": peak, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
              "target_fraction": 0.30, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
