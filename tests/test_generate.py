"""Generation from a checkpoint: seeds are deterministic, truncation pulls to the mean, any output size."""
from __future__ import annotations

import numpy as np
import torch

from models.checkpoint import latest_checkpoint
from models.data import load_images
from models.generate import grid, images_from_seeds, interpolation_frames, load_generator
from models.trainer import TrainConfig, Trainer

SMALL_NET = dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32, mapping_layers=2)


def _snapshot(tiny_dataset, tmp_path):
    cfg = TrainConfig(arch="stylegan2", resolution=32, batch=4, snapshot_kimg=0.008, ada_target=0.0, net=SMALL_NET)
    Trainer(cfg, load_images(tiny_dataset, 32), tmp_path / "run").train(0.008)
    return latest_checkpoint(tmp_path / "run")[0]


def test_same_seed_same_image_in_any_batch(tiny_dataset, tmp_path):
    G, arch = load_generator(_snapshot(tiny_dataset, tmp_path))
    a = images_from_seeds(G, arch, [3, 7, 11], batch=3)
    b = images_from_seeds(G, arch, [11, 7], batch=1)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8
    # Bit-identical for the same batch; across batch sizes CPU kernels may sum in another order (±1 level).
    assert np.array_equal(a, images_from_seeds(G, arch, [3, 7, 11], batch=3))
    assert np.abs(a[2].astype(int) - b[0]).max() <= 1 and np.abs(a[1].astype(int) - b[1]).max() <= 1
    assert not np.array_equal(a[0], a[1])


def test_truncation_zero_gives_the_average_image(tiny_dataset, tmp_path):
    G, arch = load_generator(_snapshot(tiny_dataset, tmp_path))
    imgs = images_from_seeds(G, arch, [1, 2, 3], truncation_psi=0.0)
    assert np.array_equal(imgs[0], imgs[1]) and np.array_equal(imgs[1], imgs[2])


def test_output_resolution_and_grid(tiny_dataset, tmp_path):
    G, arch = load_generator(_snapshot(tiny_dataset, tmp_path))
    imgs = images_from_seeds(G, arch, list(range(5)), resolution=64)
    assert imgs.shape == (5, 64, 64, 3)
    assert grid(imgs).size == (3 * 64, 2 * 64)


def test_loading_uses_weights_only_and_rebuilds_the_architecture(tiny_dataset, tmp_path):
    ckpt = _snapshot(tiny_dataset, tmp_path)
    state = torch.load(ckpt, weights_only=True)
    G, arch = load_generator(ckpt)
    assert arch["name"] == "stylegan2"
    assert all(torch.equal(G.state_dict()[k], v) for k, v in state["G_ema"].items())


def _pggan_snapshot(tiny_dataset, tmp_path):
    cfg = TrainConfig(arch="pggan", resolution=32, batch=4, snapshot_kimg=0.008, fade_kimg=0.004,
                      stabilize_kimg=0.004, net=dict(channel_base=256, channel_max=64, z_dim=32))
    Trainer(cfg, load_images(tiny_dataset, 32), tmp_path / "pg").train(0.016)
    return latest_checkpoint(tmp_path / "pg")[0]


def test_interpolation_passes_through_each_seed_and_loops(tiny_dataset, tmp_path):
    for ckpt in (_snapshot(tiny_dataset, tmp_path), _pggan_snapshot(tiny_dataset, tmp_path)):
        G, arch = load_generator(ckpt)
        seeds = [1, 5, 9]
        frames = interpolation_frames(G, arch, seeds, frames=12, truncation_psi=0.7, batch=5)
        at_seeds = images_from_seeds(G, arch, seeds, truncation_psi=0.7)
        assert frames.shape == (12,) + at_seeds.shape[1:]
        # Frames 0, 4, 8 are the seeds' own images; the ones between differ from both ends.
        for i, k in enumerate((0, 4, 8)):
            assert np.abs(frames[k].astype(int) - at_seeds[i]).max() <= 1, arch["name"]
        assert not np.array_equal(frames[2], frames[0]) and not np.array_equal(frames[2], frames[4])
        # The last frame leads back towards the first seed (a loop): closer to it than to seed 9's image.
        d = lambda a, b: np.abs(a.astype(int) - b).mean()  # noqa: E731
        assert d(frames[11], at_seeds[0]) < d(frames[8], at_seeds[0])


def test_pggan_snapshot_draws_at_the_stage_it_had_grown_to(tiny_dataset, tmp_path):
    G, arch = load_generator(_pggan_snapshot(tiny_dataset, tmp_path))
    # 16 images at 4 per fade-in and per stage: 16x16 (stage 2) faded in, 32x32 not grown yet.
    assert (arch["stage"], arch["alpha"]) == (2, 1.0) and arch["net"]["resolution"] == 32
    assert images_from_seeds(G, arch, [0, 1]).shape == (2, 16, 16, 3)
    assert images_from_seeds(G, arch, [0, 1], resolution=8).shape == (2, 8, 8, 3)
