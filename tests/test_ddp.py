"""Data-parallel training: 2 CPU processes (gloo) make the same update as one process with the whole batch,
and `ganflow train` runs under torchrun."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.checkpoint import list_checkpoints
from models.data import load_images
from models.trainer import TrainConfig, Trainer
from tests.conftest import ROOT

# Style mixing, path-length regularization and noise inputs draw per process (as the reference's do), so they are
# off here (G steps first, as the reference's loop: D's fakes then carry its noise at the strengths G just moved).
SG2 = dict(arch="stylegan2", resolution=32, net=dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32,
                                                     mapping_layers=2, use_noise=False), r1_interval=1,
           style_mixing=0, pl_weight=0)
# WGAN-GP draws its interpolation points per process, so the PGGAN comparison uses the least-squares loss.
PGGAN = dict(arch="pggan", resolution=16, loss="lsgan", fade_kimg=0.004, stabilize_kimg=0.004,
             net=dict(channel_base=256, channel_max=64, z_dim=32))
# StyleGAN3-T: its running statistics move in D's pass per process, then are averaged over processes.
SG3T = dict(arch="stylegan3-t", resolution=16, net=dict(channel_base=256, channel_max=16, z_dim=16, w_dim=16),
            r1_interval=1)
# The largest single-weight gap allowed, in Adam steps (lr). D's step runs on fakes of G after G's update, whose
# near-eps gradients already differ by a part of lr (see below); StyleGAN3's 16 layers hold more G weights
# with gradients near Adam's eps (|g| ~ 1e-8 at init), where that moves their first step by up to ~0.2 lr.
MAX_GAP = {"stylegan2": 0.05, "pggan": 0.05, "stylegan3-t": 0.5}
# Gradient accumulation on top: batch 16, each process takes its 8 in rounds of 4 (batch_gpu), adding their gradients
# before the one all-reduce; the rounds, strided as the shares are, hold the whole batch's minibatch-std groups.
SG2_ROUNDS = dict(SG2, batch=16, batch_gpu=4)
BATCH = 8  # 4 per process: one minibatch-std group of 4, the same groups as the whole batch's (n % 2)


def _cfg(kw: dict) -> TrainConfig:
    return TrainConfig(**{"batch": BATCH, **kw}, snapshot_kimg=1.0, seed=3)


def _whole(kw: dict) -> dict:
    """The one-process run it is compared with: the whole batch in one pass."""
    return {k: v for k, v in kw.items() if k != "batch_gpu"}


def _one_step(cfg: TrainConfig, data: Path, run_dir: Path, kimg: float) -> Trainer:
    trainer = Trainer(cfg, load_images(data, cfg.resolution), run_dir)
    trainer.snapshot = lambda: None  # compare the step, not the checkpoint
    trainer.train(kimg)
    return trainer


def _worker(rank: int, world: int, store: str, kw: dict, data: str, out: str, kimg: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        trainer = _one_step(_cfg(kw), Path(data), Path(out) / "run", kimg)
        if rank == 0:
            torch.save({"G": trainer.G.state_dict(), "D": trainer.D.state_dict(),
                        "G_ema": trainer.G_ema.state_dict()}, Path(out) / "ddp.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kw", [SG2, PGGAN, SG3T, SG2_ROUNDS],
                         ids=["stylegan2", "pggan", "stylegan3-t", "stylegan2-rounds"])
def test_two_processes_make_the_same_update_as_one_with_the_whole_batch(tiny_dataset, tmp_path, kw):
    # One step (D with R1, G, EMA): after it StyleGAN2's noise strengths, updated from per-process noise, differ.
    kimg = kw.get("batch", BATCH) / 1000
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), kw, str(tiny_dataset), str(tmp_path), kimg), nprocs=2)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    torch.set_num_threads(1)
    single = _one_step(_cfg(_whole(kw)), tiny_dataset, tmp_path / "single", kimg)
    start = Trainer(_cfg(_whole(kw)), load_images(tiny_dataset, kw["resolution"]), tmp_path / "start")
    off = total = 0  # weights (all nets) more than a thousandth of a step apart
    for name, net in (("G", single.G), ("D", single.D), ("G_ema", single.G_ema)):
        for key, value in net.state_dict().items():
            if "noise_strength" in key:
                continue  # the per-pixel noise is drawn per process; its strength's gradient sees that noise
            if kw.get("batch_gpu") and key.endswith("w_avg"):
                continue  # the truncation centre moves once per round, as the reference's update_emas
            gap = (value - ddp[name][key]).abs()
            # Adam's first step moves a weight by lr * g / (|g| + eps): about lr, whatever the gradient's size,
            # so gradients that differ only by summation order can differ by a part of lr where g is ~eps.
            # Those are rare; everywhere else the two runs agree to a thousandth of a step.
            assert gap.max().item() <= MAX_GAP[kw["arch"]] * single.arch.lr, (name, key, gap.max().item())
            off += int((gap > 1e-3 * single.arch.lr).sum())
            total += gap.numel()
            if kw["arch"] != "stylegan3-t":  # its tensors are too small (256 weights) for a per-tensor rate
                assert (gap > 1e-3 * single.arch.lr).float().mean().item() <= 1e-3, (name, key)
    assert off / total <= 1e-3, (off, total)
    # Not vacuous: the two-process weights did move from the start, by whole Adam steps.
    moved = [(ddp["D"][k] - v).abs().max().item() for k, v in start.D.state_dict().items()]
    assert max(moved) > 0.4 * single.arch.lr


def test_torchrun_trains_and_resumes_with_two_cpu_processes(tiny_dataset, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "run"

    def train(kimg: str) -> subprocess.CompletedProcess:
        cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "flows.cli", "train",
               "--data", str(tiny_dataset), "--arch", "stylegan2", "--resolution", "32", "--kimg", kimg,
               "--snapshot-kimg", "0.008", "--batch", "8", "--channel-base", "512", "--channel-max", "64",
               "--run-dir", str(run)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    first = train("0.016")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [k for k, _ in list_checkpoints(run)] == [0.008, 0.016]
    assert first.stdout.count("trained to 0.016 kimg") == 1  # one process reports
    again = train("0.032")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    state = torch.load(list_checkpoints(run)[-1][1], weights_only=True)
    assert state["kimg"] == 0.032 and len(state["rng_ranks"]) == 2
