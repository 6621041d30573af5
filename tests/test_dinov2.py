"""FD-DINOv2 offline: ganflow's DINOv2 extractor (timm's ViT reading Meta's layout) gives the official model's
features on the same seeded random weights (recorded from a scratch facebookresearch/dinov2 by
tests/data/dinov2/record.py), preprocesses as dgm-eval, and `ganflow fid --metrics fd_dinov2` equals torch-fidelity's
FD of those features; the weights file is read once, weights_only, and refused when it is not a DINOv2 ViT-S/B/L."""
from __future__ import annotations

import hashlib
import io
import os
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.cli import main
from tasks.evaluation.dinov2 import (DinoV2WeightsError, load_extractor, preprocess, random_state_dict, resolve_weights,
                          variant_of)
from tasks.evaluation.metrics import Stats, extract_features, fid_from_stats, folder_batches, folder_files

DATA = Path(__file__).parent / "data" / "dinov2"
RECORD = json.loads((DATA / "record.json").read_text())


def state_digest(state: dict) -> str:  # as record.py
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The recorded random weights, rebuilt from their seed and saved as Meta's .pth files are (a plain state dict)."""
    state = random_state_dict(RECORD["variant"], RECORD["seed"])
    assert state_digest(state) == RECORD["state_sha256"], "the seeded weights changed (torch/timm version): re-record"
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = np.load(DATA / "reference.npz")
    return {"a": ref["features_a"], "b": ref["features_b"]}


def test_features_equal_the_official_models(weights, reference):
    extractor, digest = load_extractor(weights)
    assert extractor.name == "dinov2-vits14" and digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    for side in ("a", "b"):  # 32² and 48² images, both resized to 224²
        ours = extract_features(extractor, folder_batches(DATA / side, batch=5))
        assert ours.shape == (8, 384)
        assert np.abs(ours - reference[side]).max() < 1e-4
    assert reference["a"].std(axis=0).mean() > 0.05  # the images give distinct features: the check has teeth


def test_preprocessing_is_dgm_evals_transform():
    import torchvision.transforms as T

    dgm_eval = T.Compose([T.Resize((224, 224), T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    files = folder_files(DATA / "b")[:3]
    expected = torch.stack([dgm_eval(Image.open(f).convert("RGB")) for f in files])
    ours = preprocess(next(folder_batches(DATA / "b", batch=3)))
    assert ours.shape == (3, 3, 224, 224) and torch.allclose(ours, expected, atol=1e-6)


def test_ganflow_fid_fd_dinov2_equals_torch_fidelity_on_the_official_features(weights, reference, tmp_path, capsys):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = [fid_features_to_statistics(torch.from_numpy(reference[k])) for k in ("a", "b")]
    fd_ref = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    # scipy's sqrtm runs on the machine's BLAS kernels, chosen per CPU: 1.4e-7 apart between the machine that recorded
    # it and an AMD EPYC with AVX-512 (2026-12-07); the parity that matters is ours against it on this machine, below.
    assert fd_ref == pytest.approx(RECORD["fd_torch_fidelity"], rel=1e-6)
    # our Fréchet distance on the same features (torch-fidelity keeps the means in float32: ~1e-8 apart)
    assert fid_from_stats(Stats.of(reference["a"]), Stats.of(reference["b"])) == pytest.approx(fd_ref, rel=1e-6)

    args = ["fid", str(DATA / "a"), str(DATA / "b"), "--metrics", "fd_dinov2", "--dinov2-weights", str(weights),
            "--cache-dir", str(tmp_path / "cache"), "--params", str(tmp_path / "none.yaml")]
    capsys.readouterr()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fd_dinov2"] == pytest.approx(fd_ref, rel=1e-4)  # end to end: our features, our FD
    assert "fid" not in out and out["audit_features"] == "dinov2-vits14"
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    assert out["dinov2_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert out["extracted"] == {"a": 8, "b": 8}
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["extracted"] == {"a": 0, "b": 8} and again["fd_dinov2"] == pytest.approx(out["fd_dinov2"], rel=1e-9)


def test_the_file_is_read_once_and_unpickled_only_from_memory_with_weights_only(weights, monkeypatch):
    opens, loads = [], []
    real_open, real_load = os.open, torch.load
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()

    def open_(path, *a, **kw):
        if Path(path) == weights:
            opens.append(path)
        return real_open(path, *a, **kw)

    def load(f, *a, **kw):
        loads.append((type(f), kw.get("weights_only")))
        return real_load(f, *a, **kw)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(torch, "load", load)
    load_extractor(weights, sha256=expected)
    assert len(opens) == 1 and loads == [(io.BytesIO, True)]


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker file
        return (open, (str(self.marker), "w"))


def test_unsafe_wrong_or_foreign_files_are_refused(weights, tmp_path):
    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.pth"
    torch.save({"cls_token": torch.zeros(1), "evil": _Planted(marker)}, planted, pickle_module=pickle)
    with pytest.raises(DinoV2WeightsError, match="weights_only=True"):
        load_extractor(planted)
    assert not marker.exists()
    with pytest.raises(DinoV2WeightsError, match="sha256"):
        load_extractor(weights, sha256="0" * 64)
    state = random_state_dict("vits14", 1)
    for change, message in (({"register_tokens": torch.zeros(1, 4, 384)}, "registers"),
                            ({"cls_token": torch.zeros(1, 1, 1536)}, "ViT-g/14"),
                            ({"blocks.11.norm1.weight": None}, "12 blocks")):
        broken = {k: v for k, v in {**state, **change}.items() if v is not None}
        if message == "12 blocks":
            broken = {k: v for k, v in broken.items() if not k.startswith("blocks.11.")}
        with pytest.raises(DinoV2WeightsError, match=message):
            variant_of(broken)
    with pytest.raises(DinoV2WeightsError, match="not a DINOv2 ViT state dict"):
        variant_of({"conv.weight": torch.zeros(1)})


def test_the_variant_comes_from_the_shapes():
    def shaped(width: int, depth: int) -> dict:  # only what variant_of reads: the keys and the widths
        return {"cls_token": torch.zeros(1, 1, width), "pos_embed": torch.zeros(1, 1370, width),
                **{f"blocks.{i}.attn.qkv.weight": torch.zeros(1) for i in range(depth)}}

    assert [variant_of(shaped(w, d)).name for w, d in ((384, 12), (768, 12), (1024, 24))] == \
        ["vits14", "vitb14", "vitl14"]
    assert variant_of(random_state_dict("vits14")).timm_name == "vit_small_patch14_dinov2"


def test_no_weights_file_says_which_file_to_put_where(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("GANFLOW_DINOV2_WEIGHTS", raising=False)
    with pytest.raises(DinoV2WeightsError, match="dinov2_vitl14_pretrain.pth"):
        resolve_weights(None, None)
    assert resolve_weights("random", None, tmp_path).name == "dinov2-vits14-random-init.pt"
    monkeypatch.setenv("GANFLOW_DINOV2_WEIGHTS", str(tmp_path / "nope.pth"))
    assert main(["fid", str(DATA / "a"), str(DATA / "b"), "--metrics", "fd_dinov2",
                 "--params", str(tmp_path / "none.yaml")]) == 2
    assert "nope.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # checked while the options are parsed, against the registry
        main(["fid", str(DATA / "a"), str(DATA / "b"), "--metrics", "fd_inception"])
    assert refused.value.code == 2 and "fd_inception" in capsys.readouterr().err
