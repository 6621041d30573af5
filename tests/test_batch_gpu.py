"""Gradient accumulation (train.batch_gpu, NVIDIA's --batch-gpu): a step in rounds of batch_gpu images makes the
whole batch's step, up to float summation order, but where NVIDIA's accumulation works per round (path length's
batch shrink and running mean, the running statistics); a batch_gpu that does not divide the batch is one line.
(DDP with rounds: tests/test_ddp.py; exact resume with rounds: tests/test_trainer.py.)"""
from __future__ import annotations

import pytest

from models import losses
from models.data import load_images
from models.stylegan2 import SynthesisLayer
from models.trainer import TrainConfig, Trainer
from tests.conftest import PARAMS

# batch 16 at 32², with the 'auto' preset's minibatch-std groups of 4, which every round here holds (the reference
# requires batch_gpu >= its group; a smaller round clamps the group, so it has other groups by design).
NET = dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32, mapping_layers=2)
BATCH = 16


def _cfg(**kw) -> TrainConfig:
    base = dict(arch="stylegan2", resolution=32, batch=BATCH, snapshot_kimg=1.0, seed=0, net=NET)
    return TrainConfig(**{**base, **kw})


def _train(cfg: TrainConfig, images, run_dir, steps: int, phase_grads: list | None = None) -> Trainer:
    """`steps` steps; `phase_grads`, if given, gets every phase's gradients of the first step, as each phase's one
    optimizer step sees them (Gboth, Dmain, Dreg with lazy R1 and no path length)."""
    trainer = Trainer(cfg, images, run_dir)
    trainer.snapshot = lambda: None  # compare the steps, not the checkpoints
    if phase_grads is not None:
        for opt, name in ((trainer.opt_G, "G"), (trainer.opt_D, "D")):
            opt.step = _recording(trainer, opt.step, name, phase_grads)
    trainer.train(steps * cfg.batch / 1000)
    return trainer


def _recording(trainer: Trainer, step, name: str, phase_grads: list):
    def wrapped(*args, **kwargs):
        if trainer.step == 0:
            net = getattr(trainer, name)
            phase_grads.append({f"{name}.{key}": p.grad.clone() for key, p in net.named_parameters()
                                if p.grad is not None})
        return step(*args, **kwargs)
    return wrapped


def test_rounds_make_the_whole_batch_step(tiny_dataset, tmp_path, monkeypatch, one_torch_thread):
    """In rounds of 8 and of 4, every phase's gradients (Gboth, Dmain, and Dreg's R1, each phase's own rounds
    added up before its one optimizer step) are the whole batch's up to float summation order on the first step,
    and after a second step G, D, G_ema and ADA's p (from every round's signs of D on reals) are too. The draws that
    cannot follow the images are off: a split step draws its random numbers in another order, so the per-pixel
    noise (networks without noise inputs, the reference's use_noise=False), style mixing and augmentation (p is 0
    until ADA's first update, after the second step) would differ by their draws, not by the accumulation."""
    monkeypatch.setattr(SynthesisLayer, "noise", lambda self, x, noise_mode: None)
    images = load_images(tiny_dataset, 32)
    kw = dict(r1_interval=2, pl_weight=0, style_mixing=0, ada_target=0.2, ada_interval=2, ada_kimg=0.1)
    expected: list[dict] = []
    whole = _train(_cfg(**kw), images, tmp_path / "whole", steps=1, phase_grads=expected)
    assert [sorted({k.split(".")[0] for k in g}) for g in expected] == [["G"], ["D"], ["D"]]  # Gboth, Dmain, Dreg
    whole.train(2 * BATCH / 1000)
    assert float(whole.augment.p) > 0  # ADA moved p from the two steps' signs (r_t above the target)
    lr = whole.arch.lr
    for batch_gpu in (8, 4):
        got: list[dict] = []
        split = _train(_cfg(**kw, batch_gpu=batch_gpu), images, tmp_path / f"bg{batch_gpu}", steps=1,
                       phase_grads=got)
        assert split.rounds == BATCH // batch_gpu and len(got) == len(expected)
        # float32 sums in another order: a relative error of about 1e-6 (measured: 2e-6 at most); a gradient
        # scaled otherwise (NVIDIA's sum of the rounds' means) or a round left out is off by a whole part.
        for phase, (grads, want) in enumerate(zip(got, expected)):
            assert grads.keys() == want.keys()
            for key, grad in grads.items():
                error = (grad - want[key]).norm() / want[key].norm().clamp_min(1e-30)
                assert error.item() <= 1e-4, (batch_gpu, phase, key, error.item())
        split.train(2 * BATCH / 1000)
        assert float(split.augment.p) == float(whole.augment.p) and split.ada.r_t == whole.ada.r_t
        for name in ("G", "D", "G_ema"):
            a, b = getattr(whole, name).state_dict(), getattr(split, name).state_dict()
            for key in a:
                if key.endswith("w_avg"):
                    continue  # the truncation centre moves once per round, as the reference's update_emas
                # Adam (beta1 0) moves a weight by lr * g / sqrt(v): the second step's gradients, taken on weights
                # a float error apart, carry it to a part of lr where they nearly cancel or sit near Adam's eps
                # (measured: 3% of lr at most); 5% of lr bounds that, as tests/test_ddp.py does.
                gap = (a[key] - b[key]).abs().max().item()
                assert gap <= 0.05 * lr, (batch_gpu, name, key, gap)
    # Not a vacuous comparison: the steps moved the weights by whole Adam steps, 20 times the largest gap allowed.
    fresh = Trainer(_cfg(**kw), images, tmp_path / "fresh")
    moved = max((p - q).abs().max().item() for p, q in zip(whole.G.parameters(), fresh.G.parameters()))
    assert moved > lr


def test_path_length_runs_per_round_as_the_reference(tiny_dataset, tmp_path, monkeypatch, one_torch_thread):
    """The reference's accumulate_gradients regularizes path length on the first 1/pl_batch_shrink of each round
    and moves the running mean there, once per round: a batch of 8 in rounds of 4 has two penalties of 2 images,
    the second starting from the mean the first left, and the step's mean is the last one."""
    calls = []
    penalty = losses.path_length_penalty

    def spy(images, ws, mean, *a, **kw):
        out = penalty(images, ws, mean, *a, **kw)
        calls.append((len(images), mean.item(), out[1].item()))
        return out

    monkeypatch.setattr(losses, "path_length_penalty", spy)
    images = load_images(tiny_dataset, 32)
    for batch_gpu, sizes in ((0, [4]), (4, [2, 2]), (2, [1, 1, 1, 1])):
        calls.clear()
        trainer = _train(_cfg(batch=8, batch_gpu=batch_gpu), images, tmp_path / f"bg{batch_gpu}", steps=1)
        assert [n for n, _, _ in calls] == sizes
        assert calls[0][1] == 0 and all(after[1] == before[2] for before, after in zip(calls, calls[1:]))
        assert trainer.pl_mean.item() == calls[-1][2] > 0


def test_the_minibatch_std_group_is_clamped_to_a_round(tiny_dataset, tmp_path):
    """As the reference's layer, min(group, batch_gpu): the 'auto' preset's group of 4 is 2 in rounds of 2."""
    images = load_images(tiny_dataset, 32)
    for batch_gpu, group in ((None, 4), (4, 4), (2, 2)):
        trainer = Trainer(_cfg(batch_gpu=batch_gpu), images, tmp_path / str(batch_gpu))
        assert trainer.describe_arch()["net"]["mbstd_group"] == group


def test_a_batch_gpu_that_does_not_divide_the_batch_is_one_line(tiny_dataset, tmp_path, capsys):
    from flows.cli import main
    from tasks.common.settings import ParamsError, TrainSettings, load

    with pytest.raises(ParamsError, match=r"^train.batch_gpu 3 does not divide train.batch 8: "):
        load(TrainSettings, PARAMS, batch=8, batch_gpu=3)
    assert load(TrainSettings, PARAMS, batch=8, batch_gpu=2).batch_gpu == 2
    # The batch from the preset, or split over processes, is the trainer's to check.
    with pytest.raises(ValueError, match=r"^batch_gpu 3 must divide each process's batch, 16 \(batch 16 in one "):
        Trainer(_cfg(batch_gpu=3), load_images(tiny_dataset, 32), tmp_path / "r")
    rc = main(["train", "--data", str(tiny_dataset), "--run-dir", str(tmp_path / "run"), "--params", str(PARAMS),
               "--batch", "8", "--batch-gpu", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train.batch_gpu 3 does not divide train.batch 8" in err[0], err


def test_ganflow_train_batch_gpu_reaches_the_trainer(tmp_path, capsys, one_torch_thread):
    """The option as users type it: through the settings into the run's checkpoint, and the run says it."""
    from flows.cli import main
    from models.checkpoint import latest_checkpoint
    from tests.conftest import write_curated

    data = write_curated(tmp_path / "data", n=4, side=16)
    rc = main(["train", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--params", str(PARAMS),
               "--arch", "stylegan2", "--resolution", "16", "--kimg", "0.004", "--snapshot-kimg", "0.004",
               "--batch", "4", "--batch-gpu", "2", "--channel-base", "64", "--channel-max", "16",
               "--net", "{z_dim: 8, w_dim: 8}", "--device", "cpu"])
    assert rc == 0
    assert "batch 4 over 1 process(es) in rounds of 2," in capsys.readouterr().err
    assert latest_checkpoint(tmp_path / "run")[1]["config"]["batch_gpu"] == 2
