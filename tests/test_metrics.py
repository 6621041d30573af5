"""FID/KID: `ganflow fid` equals torch_fidelity.calculate_metrics on the same folders, with a random-initialized
weights file of the extractor's architecture (nothing is downloaded); cached real stats; unsafe files refused."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from tasks.evaluation.metrics import InceptionWeightsError, check_weights, resolve_weights, write_random_inception_weights

N = 8  # images per folder: the extractor runs at 299² on CPU (~0.5 s an image on a busy 2-core machine)


def random_inception_weights(path) -> str:
    """The extractor's architecture with random weights (tasks.evaluation.metrics builds it from torch-fidelity's class)."""
    return str(write_random_inception_weights(path))


def write_images(folder, n: int, seed: int, side: int = 32, tint: int = 0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = np.clip(rng.normal(128 + tint, 50, (side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return random_inception_weights(tmp_path_factory.mktemp("inception") / "inception-random.pt")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return write_images(root / "a", N, seed=1), write_images(root / "b", N, seed=2, tint=40)


def _fid_cli(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["fid", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def test_ganflow_fid_equals_torch_fidelity_and_cached_rerun_extracts_only_generated(weights, folders, tmp_path,
                                                                                      capsys):
    import torch_fidelity

    a, b = folders
    cache = tmp_path / "cache"
    ours = _fid_cli(capsys, a, b, "--inception-weights", weights, "--kid", "--kid-subsets", 10,
                    "--kid-subset-size", N - 3, "--cache-dir", cache)
    ref = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), cuda=False, fid=True, kid=True,
                                           feature_extractor_weights_path=weights, kid_subsets=10,
                                           kid_subset_size=N - 3, cache=False, verbose=False, save_cpu_ram=True)
    fid_ref = ref["frechet_inception_distance"]
    assert fid_ref > 0
    assert ours["fid"] == pytest.approx(fid_ref, rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-4)
    assert ours["extracted"] == {"a": N, "b": N}
    assert "biased" in ours["warning"]  # 8 images < 2,048

    again = _fid_cli(capsys, a, b, "--inception-weights", weights, "--kid", "--kid-subsets", 10,
                     "--kid-subset-size", N - 3, "--cache-dir", cache)
    assert again["extracted"] == {"a": 0, "b": N}  # real side from the cache
    assert again["fid"] == pytest.approx(ours["fid"], rel=1e-9)
    assert again["kid_mean"] == pytest.approx(ours["kid_mean"], rel=1e-9)


def test_no_weights_file_says_which_file_to_put_where(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GANFLOW_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(InceptionWeightsError, match="weights-inception-2015-12-05-6726825d.pth"):
        resolve_weights(None, None)
    monkeypatch.setenv("GANFLOW_INCEPTION_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(InceptionWeightsError, match=r"\$GANFLOW_INCEPTION_WEIGHTS names .*nope.pth"):
        resolve_weights(None, "ignored-when-env-is-set")
    a = write_images(tmp_path / "a", 2, seed=0)
    assert main(["fid", str(a), str(a), "--params", str(tmp_path / "none.yaml")]) == 2
    assert "nope.pth" in capsys.readouterr().err


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file: code run by a pickle load
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_refused_before_torch_fidelity_unpickles_it(tmp_path):
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.pth"
    torch.save({"conv.weight": torch.zeros(1), "evil": _Planted(marker)}, planted, pickle_module=pickle)
    with pytest.raises(InceptionWeightsError, match="weights_only=True"):
        check_weights(planted)
    assert not marker.exists()


def test_sha256_mismatch_is_refused(tmp_path):
    good = tmp_path / "w.pth"
    torch.save({"w": torch.ones(2)}, good)
    assert len(check_weights(good)) == 64
    with pytest.raises(InceptionWeightsError, match="sha256"):
        check_weights(good, sha256="0" * 64)
