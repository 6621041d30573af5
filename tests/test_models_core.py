"""Checkpoints, sampler and losses of the GAN core (models/), on CPU."""
from __future__ import annotations

import io
import random
import tarfile
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from models import checkpoint as ck
from models import losses
from models.data import DatasetError, SamplerState, ShuffledSampler, load_images
from models.run_dir import checkpoint_name
from tests.conftest import write_curated


def test_checkpoint_roundtrip_is_weights_only_and_restores_rng(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = {"G": torch.nn.Linear(3, 2).state_dict(), "kimg": 1.5, "rng": ck.rng_state(), "config": {"a": [1, 2]}}
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = ck.save_checkpoint(tmp_path, 1.5, state)
    assert path.name == "ckpt-000001.500.pt"
    loaded = torch.load(path, weights_only=True)  # the safe unpickler accepts every entry
    ck.set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert not list((tmp_path / "checkpoints").glob(".ckpt-*"))  # no temp file left behind


def test_latest_checkpoint_skips_a_torn_file(tmp_path):
    for kimg in (1, 2, 3):
        ck.save_checkpoint(tmp_path, kimg, {"kimg": float(kimg), "w": torch.full((64,), float(kimg))})
    newest = tmp_path / "checkpoints" / checkpoint_name(3)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn mid-write
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path, state = ck.latest_checkpoint(tmp_path)
    assert state["kimg"] == 2.0 and path.name == checkpoint_name(2)
    assert any("skipping unreadable checkpoint" in str(w.message) for w in caught)


def test_no_checkpoint_is_none(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None


def test_sampler_resumes_exactly_and_covers_each_epoch():
    a = ShuffledSampler(10, seed=7)
    first = a.take(13)
    assert sorted(first[:10].tolist()) == list(range(10))  # one epoch is a permutation
    resumed = ShuffledSampler(10, seed=7, state=SamplerState(a.state.epoch, a.state.index))
    assert torch.equal(resumed.take(25), a.take(25))
    assert not torch.equal(ShuffledSampler(10, seed=8).take(10), ShuffledSampler(10, seed=7).take(10))


def test_load_images_from_shards_at_training_resolution(tmp_path):
    data = write_curated(tmp_path / "d", n=3, side=32)
    full = load_images(data, 32)
    with tarfile.open(data / "shards" / "shard-000000.tar") as tf:
        first = np.array(Image.open(io.BytesIO(tf.extractfile(tf.getmembers()[0]).read())))
    assert torch.equal(full[0].permute(1, 2, 0), torch.from_numpy(first))  # shard order, exact pixels
    small = load_images(data, 16)
    assert small.shape == (3, 3, 16, 16) and small.dtype == torch.uint8


def test_load_images_without_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="ganflow curate"):
        load_images(tmp_path, 16)


def test_losses_prefer_real_over_fake():
    good = (torch.full((4, 1), 3.0), torch.full((4, 1), -3.0))  # D separates reals from fakes
    bad = (torch.full((4, 1), -3.0), torch.full((4, 1), 3.0))
    for d_loss, g_loss in losses.LOSSES.values():
        assert d_loss(*good) < d_loss(*bad)
        assert g_loss(good[1]) > g_loss(bad[1])  # G loses when its fakes are spotted


def test_r1_penalty_is_zero_for_flat_d_and_positive_otherwise():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    assert losses.d_r1_penalty((x * 0).sum(dim=[1, 2, 3]), x).item() == 0.0
    assert losses.d_r1_penalty((2 * x).sum(dim=[1, 2, 3]), x).item() == pytest.approx(4 * 3 * 8 * 8)


def test_gradient_penalty_is_zero_for_unit_gradient_critic():
    D = lambda x: x.flatten(1)[:, :1]  # gradient norm exactly 1 everywhere
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    assert losses.gradient_penalty(D, real, fake).item() == pytest.approx(0.0)
