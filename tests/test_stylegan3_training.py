"""StyleGAN3-T/R trained and used as StyleGAN2 is: the reference's train.py settings, which forward moves
the running statistics, R's discriminator blur, the stage plan and params, and a tiny trained StyleGAN3-R
snapshot through generate, morph, serve and evaluate. (Exact resume after SIGKILL: tests/test_trainer.py.)
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from models.arch import StyleGAN3Arch, build_arch
from models.checkpoint import latest_checkpoint
from models.data import load_images
from models.generate import images_from_seeds, interpolation_frames, load_generator
from models.stylegan3 import blur
from models.trainer import TrainConfig, Trainer

SG3_NET = dict(channel_base=256, channel_max=16, z_dim=16, w_dim=16)


def _cfg(arch: str = "stylegan3-r", **kw) -> TrainConfig:
    base = dict(arch=arch, resolution=16, batch=4, snapshot_kimg=0.004, ada_target=0.0, r1_interval=2, net=SG3_NET)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread):
    """A StyleGAN3-R run of two snapshots (4 and 8 images) on the tiny curated set."""
    from tests.conftest import write_curated

    root = tmp_path_factory.mktemp("sg3")
    data = write_curated(root / "data", n=10)
    Trainer(_cfg(), load_images(data, 16), root / "run").train(0.008)
    return root, data


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("arch", ["stylegan3-t", "stylegan3-r"])
def test_the_references_train_py_settings(arch):
    a = build_arch(TrainConfig(arch=arch, resolution=256, batch=32))
    assert isinstance(a, StyleGAN3Arch)
    r = arch == "stylegan3-r"
    assert (a.lr, a.ema_kimg, a.pl_weight, a.style_mixing, a.r1_gamma, a.ada_target) == (0.0025, 10.0, 0, 0, 2.0, 0.6)
    assert (a.net.mapping_layers, a.net.magnitude_ema_beta) == (2, 0.5 ** (32 / 20e3))
    assert (a.net.channel_base, a.net.channel_max, a.net.conv_kernel, a.net.use_radial_filters) == (
        (65536, 1024, 1, True) if r else (32768, 512, 3, False))
    # D: StyleGAN2's residual discriminator at --cbase/--cmax (not doubled for R), mbstd group 4, clamp 256.
    d = a.d_net
    assert (d.channel_base, d.channel_max, d.mbstd_group, d.conv_clamp, d.d_architecture) == (32768, 512, 4, 256.0, "resnet")
    assert a.describe() == {"name": arch, "net": a.net.to_dict(), "d_net": d.to_dict()}
    # R blurs D's input from sigma 10, linearly to 0 at batch * 200 / 32 = 200 kimg; T never does.
    assert [a.blur_sigma(n) for n in (0, 100_000, 200_000, 300_000)] == ([10.0, 5.0, 0.0, 0.0] if r else [0.0] * 4)
    # Explicit settings win, as for StyleGAN2 (the reference's --gamma, --batch, --cbase, --glr).
    b = build_arch(TrainConfig(arch=arch, resolution=64, batch=8, r1_gamma=0.5, lr=0.001,
                               net=dict(channel_base=1024, channel_max=32, z_dim=64, mbstd_group=2)))
    assert isinstance(b, StyleGAN3Arch)
    assert (b.r1_gamma, b.lr, b.ema_kimg, b.net.z_dim, b.d_net.mbstd_group) == (0.5, 0.001, 2.5, 64, 2)
    assert (b.net.channel_max, b.d_net.channel_max) == ((64, 32) if r else (32, 32))


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="unknown stylegan3-t network setting"):
        build_arch(TrainConfig(arch="stylegan3-t", resolution=16, batch=4, net={"channel_bass": 8}))
    with pytest.raises(ValueError, match="one preset, auto"):
        build_arch(TrainConfig(arch="stylegan3-r", resolution=16, batch=4, preset="small"))


def test_running_statistics_move_in_ds_pass_over_fakes_not_in_gs_step(tiny_dataset, tmp_path, one_torch_thread):
    """As the reference's loss: run_G(update_emas=True) in Dgen only; Gmain leaves w_avg and magnitudes."""
    trainer = Trainer(_cfg("stylegan3-t"), load_images(tiny_dataset, 16), tmp_path / "r")
    stats = lambda: {k: v.clone() for k, v in trainer.G.state_dict().items()  # noqa: E731
                     if k.endswith(("w_avg", "magnitude_ema"))}
    before = stats()
    trainer._d_step(trainer._reals())
    after_d = stats()
    assert all(not torch.equal(before[k], after_d[k]) for k in before), "D's pass must move every statistic"
    trainer._g_step()
    assert all(torch.equal(after_d[k], v) for k, v in stats().items()), "G's step must leave them"


def test_r_blurs_reals_and_fakes_before_d_until_the_fade_ends(tiny_dataset, tmp_path):
    a = build_arch(_cfg("stylegan3-r"))
    assert isinstance(a, StyleGAN3Arch)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(a.discriminate(a.D, x, 0), a.D(blur(x, 10.0)))
        assert not torch.allclose(a.discriminate(a.D, x, 0), a.D(x))
        end = round(a.blur_fade_kimg * 1000)
        assert torch.equal(a.discriminate(a.D, x, end), a.D(x))
    # A normalized Gaussian: a constant image stays constant away from the zero-padded border.
    flat = blur(torch.ones(1, 1, 64, 64), 3.0)
    assert torch.allclose(flat[..., 20:44, 20:44], torch.ones(1, 1, 24, 24), atol=1e-6)


def test_stages_and_params_for_stylegan3(tmp_path):
    """The DVC train stage and the flows read train.arch / train.r1_gamma from params.yaml."""
    from tasks.training.stages import plan_stages, train_config
    from tasks.common.settings import TrainSettings, load

    params = yaml.safe_load(open("params.yaml"))
    params["train"].update(arch="stylegan3-r", r1_gamma=0.5, cycles=2, cycle_kimg=100)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    p = load(TrainSettings, path)
    assert [s.end_kimg for s in plan_stages(p.arch, 64, None, p)] == [100, 200]  # cycles, as StyleGAN2
    cfg = train_config(p, p.arch, 64)
    assert (cfg.arch, cfg.r1_gamma) == ("stylegan3-r", 0.5)
    assert (build_arch(cfg).r1_gamma, build_arch(cfg).ada_target) == (0.5, 0.6)


# --------------------------------------------------------------------------- a trained snapshot


def test_checkpoint_records_the_architecture_and_generation_rebuilds_it(run):
    root, _ = run
    ckpt, state = latest_checkpoint(root / "run")
    assert state["arch"]["name"] == "stylegan3-r" and set(state["arch"]) == {"name", "net", "d_net"}
    assert state["arch"]["net"]["use_radial_filters"] and state["arch"]["net"]["channel_base"] == 512
    G, arch = load_generator(ckpt)
    assert all(torch.equal(G.state_dict()[k], v) for k, v in state["G_ema"].items())
    a = images_from_seeds(G, arch, [3, 7], batch=2)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8 and not np.array_equal(a[0], a[1])
    assert np.array_equal(a, images_from_seeds(G, arch, [3, 7], batch=2))  # deterministic: no noise inputs
    same = images_from_seeds(G, arch, [1, 2], truncation_psi=0.0)
    assert np.array_equal(same[0], same[1])  # truncation 0: the average w's image
    frames = interpolation_frames(G, arch, [3, 7], frames=4, batch=4)
    assert frames.shape == (4, 16, 16, 3) and np.abs(frames[0].astype(int) - a[0]).max() <= 1


def test_serve_draws_a_stylegan3_snapshot_with_truncation(run):
    from tasks.serving.app import Explorer, create_app

    root, _ = run
    client = TestClient(create_app(Explorer(run_dir=root / "run")), raise_server_exceptions=False)
    info = client.get("/api/info").json()
    assert (info["arch"], info["native_resolution"], info["truncation"]) == ("stylegan3-r", 16, True)
    r = client.get("/api/image.png", params={"seed": 3, "truncation": 0.7})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert client.get("/api/morph.gif", params={"seed_a": 1, "seed_b": 2, "frames": 3}).status_code == 200


def test_evaluation_probes_d_and_exports_a_loadable_best(run, tmp_path):
    """What `ganflow evaluate` does per architecture (its FID part only needs images from the generator,
    tested above): the divergence monitor's D/G losses rebuild the run's arch from the checkpoint's
    config (R's blur included), and best.pt loads for generation."""
    from tasks.evaluation.evaluate import discriminator_probe, export_best

    root, data = run
    ckpt, state = latest_checkpoint(root / "run")
    probe = discriminator_probe(ckpt, data)
    assert probe["loss_D"] > 0 and probe["loss_G"] > 0
    export_best(ckpt, tmp_path / "best.pt", {"fid": 1.0})
    G, arch = load_generator(tmp_path / "best.pt")
    assert arch == state["arch"] and images_from_seeds(G, arch, [0]).shape == (1, 16, 16, 3)


def test_every_command_line_and_flow_takes_the_stylegan3_families(tmp_path, monkeypatch):
    import inspect
    import typing

    from flows.cli import build_parser
    from flows.pipeline import pipeline
    from flows.cli import route_train_verbs
    from flows.train import train_flow

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()  # --data must be an existing folder
    for arch in ("stylegan3-t", "stylegan3-r"):
        train = build_parser().parse_args(["train", "--data", "d", "--run-dir", "r", "--arch", arch, "--gamma", "2"])
        assert (train.arch, train.r1_gamma) == (arch, 2.0)
        submit = build_parser().parse_args(route_train_verbs(
            ["train", "submit", "--data", "d", "--arch", arch, "--resolution", "64", "--kimg", "1", "--run-dir", "r"]))
        assert submit.arch == arch
        assert build_parser().parse_args(["train", "--flow", "--data", "d", "--run-dir", "r", "--arch", arch]).arch == arch
        for fl in (train_flow, pipeline):
            form = type(inspect.signature(fl.fn).parameters["settings"].default)  # TrainOverrides: the UI's form
            annotation = form.model_fields["arch"].annotation
            assert arch in str(annotation) or arch in typing.get_args(annotation)
