"""The training loop on CPU with small networks: it learns, and it resumes exactly, even after SIGKILL."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models.checkpoint import latest_checkpoint, list_checkpoints
from models.data import load_images
from models.trainer import TrainConfig, Trainer
from tests.conftest import ROOT

SMALL_NET = dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32, mapping_layers=2)


def _cfg(**kw) -> TrainConfig:
    base = dict(arch="stylegan2", resolution=32, batch=4, snapshot_kimg=0.008, seed=0, r1_interval=2,
                ada_target=0.0, net=SMALL_NET)
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def one_thread():
    """One torch thread: tiny networks run faster so, above all on a busy machine (float sums stay the same
    within a test, which is what the bit-identical comparisons need)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# A PGGAN small enough for CPU tests that grows 4x4 -> 16x16 in 40 images (8 per fade-in, 8 per stage).
PGGAN_NET = dict(channel_base=256, channel_max=64, z_dim=32)
PGGAN = dict(arch="pggan", resolution=16, net=PGGAN_NET, fade_kimg=0.008, stabilize_kimg=0.008)
# StyleGAN2 with ADA whose p moves fast enough to augment within a few dozen steps.
ADA = dict(ada_target=0.6, ada_kimg=0.1)
# StyleGAN3 at 16x16 with 16 channels: a few CPU steps of its 16 layers. ADA (adjusted every step) and R's
# blur are on, so the resume restores p and the blur's sigma (a function of images seen) as well as the
# running statistics (w_avg, magnitude EMAs).
SG3_NET = dict(channel_base=256, channel_max=16, z_dim=16, w_dim=16)
SG3T = dict(arch="stylegan3-t", resolution=16, net=SG3_NET, ada_target=0.01, ada_kimg=0.1, ada_interval=1)
SG3R = dict(SG3T, arch="stylegan3-r")
# Gradient accumulation (batch 4 in rounds of 2) with ADA augmenting, lazy R1 and path length, style mixing: the
# per-round draws and running means (path length's, w_avg) are in the checkpoint's state as well.
ROUNDS = dict(ADA, batch_gpu=2)


@pytest.mark.parametrize("kw", [{}, ADA, PGGAN, SG3T, SG3R, ROUNDS],
                         ids=["stylegan2", "stylegan2-ada", "pggan", "stylegan3-t-ada", "stylegan3-r-ada",
                              "stylegan2-ada-batch-gpu"])
def test_resume_gives_bit_identical_g_ema(tiny_dataset, tmp_path, kw, one_thread):
    target, stop = {"pggan": (0.048, 0.020), "stylegan3-t": (0.024, 0.012),
                    "stylegan3-r": (0.024, 0.012)}.get(kw.get("arch"), (0.064, 0.032))
    if kw.get("arch", "").startswith("stylegan3"):
        kw = {**kw, "snapshot_kimg": stop}  # fewer sample grids: StyleGAN3's 16 layers make each cost a step
    cfg = _cfg(**kw)
    images = load_images(tiny_dataset, cfg.resolution)
    straight = Trainer(cfg, images, tmp_path / "a")
    last = straight.train(target)
    first = Trainer(cfg, images, tmp_path / "b")
    first.train(stop)
    resumed = Trainer(cfg, images, tmp_path / "b")
    found = latest_checkpoint(tmp_path / "b")  # as run_training resumes
    assert found is not None
    resumed.load_state_dict(found[1])
    assert resumed.nimg == round(stop * 1000)
    resumed.train(target)
    assert _same_weights(straight.G_ema.state_dict(), resumed.G_ema.state_dict())
    assert _same_weights(straight.D.state_dict(), resumed.D.state_dict())
    if kw.get("ada_target"):
        assert last["augment_p"] > 0 and float(resumed.augment.p) == last["augment_p"]  # augmentation was on
    # Not a vacuous comparison: a different seed trains to different weights.
    other = Trainer(_cfg(**kw, seed=1), images, tmp_path / "c")
    other.train(target)
    assert not _same_weights(straight.G_ema.state_dict(), other.G_ema.state_dict())


def test_checkpoint_holds_full_state(tiny_dataset, tmp_path):
    Trainer(_cfg(), load_images(tiny_dataset, 32), tmp_path / "r").train(0.008)
    _, state = latest_checkpoint(tmp_path / "r")
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "ada", "nimg", "sampler", "rng", "config", "code_version"):
        assert key in state
    assert state["kimg"] == 0.008 and state["sampler"]["index"] == 8


def test_short_training_separates_reals_from_fakes(tiny_dataset, tmp_path):
    trainer = Trainer(_cfg(snapshot_kimg=1.0), load_images(tiny_dataset, 32), tmp_path / "r")
    history = []
    trainer.train(0.160, progress_fn=history.append)
    assert all(math.isfinite(s["loss_D"]) and math.isfinite(s["loss_G"]) for s in history)
    first, last = history[:5], history[-5:]
    gap = lambda rows: sum(r["D_real"] - r["D_fake"] for r in rows) / len(rows)
    assert gap(last) > gap(first)  # D learned to tell the dataset's reals from G's fakes
    assert sum(r["loss_D"] for r in last) < sum(r["loss_D"] for r in first)


@pytest.mark.parametrize("loss", ["wgan", "lsgan"])
def test_other_losses_train_without_nan(tiny_dataset, tmp_path, loss):
    history = []
    Trainer(_cfg(loss=loss, snapshot_kimg=1.0), load_images(tiny_dataset, 32), tmp_path / "r").train(
        0.016, progress_fn=history.append)
    assert len(history) == 4 and all(math.isfinite(s["loss_D"]) and math.isfinite(s["loss_G"]) for s in history)


def test_transfer_starts_from_snapshot_networks(tiny_dataset, tmp_path):
    from tasks.training.run import run_training

    run_training(_cfg(), tiny_dataset, tmp_path / "src", 0.016)
    snap = list_checkpoints(tmp_path / "src")[-1][1]
    source = torch.load(snap, weights_only=True)["G"]
    result = run_training(_cfg(seed=5), tiny_dataset, tmp_path / "dst", 0.004, resume_from=snap)
    assert result.transferred_from == str(snap) and result.resumed_from is None
    run_training(_cfg(seed=5), tiny_dataset, tmp_path / "fresh", 0.004)
    moved = latest_checkpoint(tmp_path / "dst")[1]
    fresh = latest_checkpoint(tmp_path / "fresh")[1]
    assert moved["kimg"] == 0.004  # counters start afresh on the new dataset

    def distance(state):
        return sum((state["G"][k].float() - source[k].float()).norm().item() for k in source)

    # One step away from the snapshot's weights, not from a new random init.
    assert distance(moved) < 0.1 * distance(fresh)


# arch: (--resolution, --channel-base, --channel-max, what the run says it trains)
SIGKILL_RUNS = {"stylegan2": ("32", "512", "64", "stylegan2 32²: G 934,979 parameters, D 218,449"),
                "stylegan3-t": ("16", "256", "16", "stylegan3-t 16²: G 683,271 parameters, D 16,449")}


def _train_cmd(data: Path, run_dir: Path, arch: str = "stylegan2") -> list[str]:
    res, base, cmax, _ = SIGKILL_RUNS[arch]
    return [sys.executable, "-m", "flows.cli", "train", "--data", str(data), "--arch", arch,
            "--resolution", res, "--kimg", "0.048", "--snapshot-kimg", "0.008", "--batch", "4",
            "--channel-base", base, "--channel-max", cmax, "--run-dir", str(run_dir)]  # ADA on (default)


@pytest.mark.parametrize("arch", list(SIGKILL_RUNS))
def test_sigkill_then_same_command_resumes_bit_identically(tiny_dataset, tmp_path, arch):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process: same float sums
    ref = subprocess.run(_train_cmd(tiny_dataset, tmp_path / "ref", arch), env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    assert SIGKILL_RUNS[arch][3] in ref.stderr  # the run says what it trains

    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_dataset, run, arch), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not any(k >= 0.016 for k, _ in list_checkpoints(run)) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(k for k, _ in list_checkpoints(run))
    assert killed_at < 0.048, "the run finished before it could be killed; use a longer run"

    again = subprocess.run(_train_cmd(tiny_dataset, run, arch), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout
    ref_state = latest_checkpoint(tmp_path / "ref")[1]
    resumed_state = latest_checkpoint(run)[1]
    assert ref_state["kimg"] == resumed_state["kimg"] == 0.048
    assert ref_state["arch"]["name"] == arch
    assert _same_weights(ref_state["G_ema"], resumed_state["G_ema"])


def test_ada_p_follows_the_sign_of_d_on_reals_towards_the_target(tiny_dataset, tmp_path):
    history = []
    trainer = Trainer(_cfg(**ADA, snapshot_kimg=1.0), load_images(tiny_dataset, 32), tmp_path / "r")
    trainer.train(0.2, progress_fn=history.append)
    p = [0.0] + [h["augment_p"] for h in history]
    for before, after, h in zip(p, p[1:], history):
        if after != before:  # an ADA update: p moved by one step in the direction of r_t - target
            assert h["ada_r_t"] is not None
            assert math.copysign(1, after - before) == math.copysign(1, h["ada_r_t"] - 0.6)
            assert abs(after - before) == pytest.approx(trainer.ada.step_size) or after in (0.0, 1.0)
    # Twelve images: D overfits (r_t above 0.6), so p must have risen, and stays a probability.
    assert max(p) > 0.3 and all(0 <= x <= 1 for x in p)


def test_ada_is_on_by_default_for_stylegan2_and_off_for_pggan(tiny_dataset, tmp_path):
    images = load_images(tiny_dataset, 32)
    sg2 = Trainer(TrainConfig(arch="stylegan2", resolution=32, batch=4, net=SMALL_NET), images, tmp_path / "a")
    assert sg2.ada is not None and sg2.ada.target == 0.6
    pg = Trainer(TrainConfig(**{**PGGAN, "resolution": 32}, batch=4), images, tmp_path / "b")
    assert pg.ada is None


def test_pggan_grows_through_its_stages_and_resets_adam_at_each(tiny_dataset, tmp_path):
    history = []
    trainer = Trainer(_cfg(**PGGAN, snapshot_kimg=1.0), load_images(tiny_dataset, 16), tmp_path / "r")
    trainer.train(0.048, progress_fn=history.append)
    assert all(math.isfinite(s["loss_D"]) and math.isfinite(s["loss_G"]) for s in history)
    seen = [(h["stage"], h["alpha"]) for h in history]
    assert seen[0] == (0, 1.0) and seen[-1] == (2, 1.0)
    assert any(0 < a < 1 for _, a in seen)  # faded in, not switched
    assert [h["stage_resolution"] for h in history][-1] == 16
    # Adam moments restarted at the last stage change (nimg 24): 6 steps since, not 12.
    assert trainer.opt_G.state[next(iter(trainer.G.parameters()))]["step"].item() == 6
    # The checkpoint records the stage reached, and its sample grid shows 16x16 images (4x4 of them).
    _, state = latest_checkpoint(tmp_path / "r")
    assert state["arch"]["name"] == "pggan" and state["arch"]["stage"] == 2
    from PIL import Image

    assert Image.open(sorted((tmp_path / "r" / "samples").glob("fakes-*.png"))[-1]).size == (64, 64)


def test_stylegan2_path_length_regularization_and_style_mixing_as_the_reference(tiny_dataset, tmp_path):
    cfg = TrainConfig(arch="stylegan2", resolution=32, batch=4, snapshot_kimg=1.0, net=SMALL_NET)
    trainer = Trainer(cfg, load_images(tiny_dataset, 32), tmp_path / "r")
    assert (trainer.arch.pl_weight, trainer.arch.style_mixing) == (2.0, 0.9)
    # Lazy path-length regularization every 4 steps: G's Adam runs at lr * 4/5, as the reference's.
    assert trainer.opt_G.param_groups[0]["lr"] == pytest.approx(trainer.arch.lr * 4 / 5)
    history = []
    trainer.train(0.020, progress_fn=history.append)
    assert [("pl_penalty" in h) for h in history] == [True, False, False, False, True]
    assert trainer.pl_mean.item() > 0 and math.isfinite(history[-1]["pl_penalty"])
    assert latest_checkpoint(tmp_path / "r")[1]["pl_mean"] == trainer.pl_mean.item()

    z = torch.randn(4, SMALL_NET["z_dim"])
    trainer.arch.style_mixing = 1.0
    _, ws = trainer.arch.generate(trainer.G, z, 0, update_stats=False, return_ws=True)
    assert not torch.equal(ws[:, 0], ws[:, -1])  # a second latent's styles from the cutoff on
    trainer.arch.style_mixing = 0.0
    _, ws = trainer.arch.generate(trainer.G, z, 0, update_stats=False, return_ws=True)
    assert torch.equal(ws[:, 0], ws[:, -1])


@pytest.mark.parametrize("kw", [{}, PGGAN, SG3R], ids=["stylegan2", "pggan", "stylegan3-r"])
def test_bf16_autocast_trains_without_nan(tiny_dataset, tmp_path, kw, one_thread):
    """The mixed-precision path that `amp: auto` takes on CUDA, run on CPU (autocast works on both)."""
    cfg = _cfg(**kw, amp="bf16", snapshot_kimg=1.0)
    trainer = Trainer(cfg, load_images(tiny_dataset, cfg.resolution), tmp_path / "r")
    assert trainer.amp and not Trainer(_cfg(**kw), load_images(tiny_dataset, cfg.resolution), tmp_path / "s").amp
    history = []
    trainer.train(0.032, progress_fn=history.append)
    assert all(math.isfinite(h["loss_D"]) and math.isfinite(h["loss_G"]) for h in history)
    assert all(p.dtype == torch.float32 for p in trainer.G.parameters())  # weights stay fp32


def test_a_checkpoint_from_another_code_version_is_a_clear_error_but_transfers(tiny_dataset, tmp_path):
    images = load_images(tiny_dataset, 32)
    Trainer(_cfg(), images, tmp_path / "r").train(0.008)
    _, state = latest_checkpoint(tmp_path / "r")
    state["code_version"] = "ganflow-train-0"
    with pytest.raises(ValueError, match="start a new run directory"):
        Trainer(_cfg(), images, tmp_path / "s").load_state_dict(state)
    other = Trainer(_cfg(), images, tmp_path / "t")
    other.load_state_dict(state, weights_only=True)
    assert _same_weights(other.G_ema.state_dict(), state["G_ema"])
