"""Evaluation: the divergence monitor and best-snapshot choice on synthetic histories, and `ganflow evaluate`
on a tiny two-snapshot run with a random-initialized extractor (fid.csv, metrics.json, best.pt)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from flows.cli import main
from tasks.evaluation.evaluate import choose_best, flag_diverged, flag_memorized, read_fid_csv
from tasks.common.settings import EvaluateSettings as EvaluateParams
from tasks.common.settings import ParamsError


def hist(fids, loss_d=None, loss_g=None):
    rows = []
    for i, f in enumerate(fids):
        r = {"kimg": float(10 * (i + 1)), "fid": f}
        if loss_d:
            r.update(loss_D=loss_d[i], loss_G=loss_g[i])
        rows.append(r)
    return rows


def test_healthy_run_nothing_flagged_best_is_lowest():
    h = hist([90, 70, 55, 60, 48, 45])  # one noisy rise is not divergence
    assert flag_diverged(h, fid_rises=3) == {}
    assert choose_best(h, {})[0]["kimg"] == 60.0


def test_fid_rising_for_several_snapshots_flags_the_rest_of_the_run():
    # Best at 30 kimg, then three rises in a row (diverged), then a lucky dip below the earlier best.
    h = hist([80, 60, 40, 45, 52, 70, 38])
    flagged = flag_diverged(h, fid_rises=3)
    assert sorted(flagged) == [40.0, 50.0, 60.0, 70.0] and flagged[70.0] == "FID rose 3 snapshots in a row"
    best, why = choose_best(h, flagged)
    assert best["kimg"] == 30.0 and "not flagged" in why
    assert choose_best(h, {})[0]["kimg"] == 70.0  # what a plain argmin would have exported


def test_d_loss_collapse_while_g_loss_climbs_flags_from_there():
    h = hist([80, 60, 50, 45, 44], loss_d=[1.2, 1.0, 0.9, 0.01, 0.002], loss_g=[0.8, 0.9, 1.0, 4.0, 7.5])
    flagged = flag_diverged(h, fid_rises=3, d_loss_min=0.05)
    assert sorted(flagged) == [40.0, 50.0] and "D loss" in flagged[40.0]
    assert choose_best(h, flagged)[0]["kimg"] == 30.0
    # A low D loss with a falling G loss is not the collapse pattern.
    calm = hist([80, 60, 50], loss_d=[1.0, 0.04, 0.03], loss_g=[3.0, 2.0, 1.5])
    assert flag_diverged(calm, d_loss_min=0.05) == {}


def test_all_flagged_falls_back_to_lowest_and_says_so():
    h = hist([10, 20, 30, 40])
    best, why = choose_best(h, flag_diverged(h, fid_rises=3))
    assert best["kimg"] == 10.0  # the rises start at 20: 10 is trusted
    best, why = choose_best(h, {r["kimg"]: "x" for r in h})
    assert best["kimg"] == 10.0 and "every snapshot" in why


def test_a_memorizing_snapshot_is_never_best_and_fd_dinov2_ranks_without_fid():
    h = [{"kimg": 10.0, "fid": 50.0, "fd_dinov2": 900.0, "memorized": 0.02},
         {"kimg": 20.0, "fid": 30.0, "fd_dinov2": 700.0, "memorized": 0.6},   # lowest, but copies its data
         {"kimg": 30.0, "fid": 40.0, "fd_dinov2": 800.0, "memorized": None}]  # evaluated before the audit existed
    memorizing = flag_memorized(h, 0.25)
    assert list(memorizing) == [20.0] and "60%" in memorizing[20.0]
    assert choose_best(h, memorizing)[0]["kimg"] == 30.0
    assert choose_best(h, {}, key="fd_dinov2") == (h[1], "lowest FD-DINOv2 among snapshots not flagged")
    assert flag_memorized(h, 1.0) == {}  # max_memorized 1: off
    assert EvaluateParams(metrics=["fd_dinov2"]).rank_by == "fd_dinov2"
    with pytest.raises(ParamsError, match="evaluate.metrics"):
        EvaluateParams().updated(metrics=["fid", "is"])


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread):
    from models.data import load_images
    from models.trainer import TrainConfig, Trainer
    from tests.conftest import write_curated
    from tests.test_metrics import random_inception_weights

    root = tmp_path_factory.mktemp("eval")
    data = write_curated(root / "data", n=10)
    net = dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32, mapping_layers=2)
    cfg = TrainConfig(arch="stylegan2", resolution=32, batch=4, snapshot_kimg=0.004, ada_target=0.0, net=net)
    Trainer(cfg, load_images(data, 32), root / "run").train(0.008)
    weights = random_inception_weights(root / "inception-random.pt")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"n_fake": 6, "batch": 6, "kid_subsets": 5, "kid_subset_size": 5,
                                                   "cache_dir": str(root / "cache")}}))
    return root, data, weights, params


def test_ganflow_evaluate_writes_csv_metrics_and_a_weights_only_best(run, capsys):
    from models.generate import images_from_seeds, load_generator

    root, data, weights, params = run
    args = ["evaluate", "--run-dir", str(root / "run"), "--data", str(data), "--inception-weights", weights,
            "--params", str(params)]
    capsys.readouterr()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    rows = read_fid_csv(root / "run")
    assert [r["kimg"] for r in rows] == out["evaluated"] == [0.004, 0.008]
    assert all(r["fid"] > 0 and r["kid"] is not None for r in rows)
    assert all(r["loss_D"] > 0 and r["loss_G"] > 0 for r in rows)  # the discriminator probe (logistic loss)
    # precision/recall and the memorization audit in Inception features (no DINOv2 asked for)
    assert all(0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and 0 <= r["memorized"] <= 1 for r in rows)
    assert all(r["fd_dinov2"] is None for r in rows)
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["precision"] == rows[-1]["precision"] and metrics["memorized"] == rows[-1]["memorized"]
    assert metrics["memorization"]["features"] == "2048" and metrics["memorization"]["threshold"] > 0
    assert metrics["kimg"] == 0.008 and metrics["n_fake"] == 6 and "biased" in metrics["warning"]
    best_row = min(rows, key=lambda r: r["fid"])
    assert metrics["best"]["kimg"] == best_row["kimg"]

    best = torch.load(root / "run" / "best.pt", weights_only=True)
    assert set(best) == {"G_ema", "arch", "kimg", "source", "fid"}  # no D, optimizers or RNG states
    src = torch.load(root / "run" / "checkpoints" / best["source"], weights_only=True)
    assert all(torch.equal(best["G_ema"][k], v) for k, v in src["G_ema"].items())
    G, arch = load_generator(root / "run" / "best.pt")
    assert images_from_seeds(G, arch, [0]).shape == (1, 32, 32, 3)

    # A second evaluation finds nothing new to do and keeps the numbers.
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["evaluated"] == [] and again["fid"] == pytest.approx(metrics["fid"], rel=1e-5)
    assert again["best"] == metrics["best"]


def test_evaluate_flow_publishes_the_fid_table_and_skips_without_weights(run, tmp_path, prefect_api, monkeypatch):
    import shutil

    from prefect.client.orchestration import get_client

    from flows.evaluate import evaluate_flow
    from tasks.training.report import artifact_key

    root, data, weights, params = run
    run_dir = tmp_path / "flowrun"
    shutil.copytree(root / "run" / "checkpoints", run_dir / "checkpoints")
    out = evaluate_flow(str(run_dir), str(data), settings={"inception_weights": weights}, params=str(params))
    assert out["evaluated"] == [0.004, 0.008] and (run_dir / "best.pt").exists()
    key = artifact_key(run_dir).replace("train-", "fid-", 1)
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert arts and "0.008" in str(arts[0].data)
    assert all(column in str(arts[0].data) for column in ("precision", "recall", "memorized"))

    monkeypatch.delenv("GANFLOW_INCEPTION_WEIGHTS", raising=False)
    skipped = evaluate_flow(str(run_dir), str(data), params=str(params), skip_without_weights=True)
    assert "weights-inception-2015-12-05-6726825d.pth" in skipped["skipped"]


def test_train_flow_evaluates_after_each_stage_when_weights_are_configured(run, tmp_path, prefect_api, monkeypatch):
    from flows.train import train_flow
    from tests.test_train_flow import tiny_params

    _, data, weights, _ = run
    monkeypatch.delenv("GANFLOW_INCEPTION_WEIGHTS", raising=False)
    params = tiny_params(tmp_path)
    cfg = yaml.safe_load(params.read_text())
    cfg["evaluate"] = {"inception_weights": weights, "n_fake": 4, "batch": 4, "kid": False,
                       "cache_dir": str(tmp_path / "cache")}
    params.write_text(yaml.safe_dump(cfg))
    result = train_flow(data=str(data), run_dir=str(tmp_path / "run"), settings={"resolution": 32, "kimg": 0.016},
                        params=str(params))
    assert [s["evaluate"]["evaluated"] for s in result["stages"]] == [[0.008], [0.016]]
    assert [r["kimg"] for r in read_fid_csv(tmp_path / "run")] == [0.008, 0.016]
    assert (tmp_path / "run" / "best.pt").exists()


def test_discriminator_probe_is_deterministic_and_skips_wgan(run, tmp_path, one_torch_thread):
    from models.checkpoint import latest_checkpoint
    from models.data import load_images
    from models.trainer import TrainConfig, Trainer
    from tasks.evaluation.evaluate import discriminator_probe

    root, data, _, _ = run
    ckpt = latest_checkpoint(root / "run")[0]
    a, b = discriminator_probe(ckpt, data), discriminator_probe(ckpt, data)
    assert a == b and set(a) == {"loss_D", "loss_G"}
    cfg = TrainConfig(arch="pggan", resolution=16, batch=4, snapshot_kimg=0.008, fade_kimg=0.004,
                      stabilize_kimg=0.004, net=dict(channel_base=256, channel_max=64, z_dim=32))
    Trainer(cfg, load_images(data, 16), tmp_path / "pg").train(0.008)
    assert discriminator_probe(latest_checkpoint(tmp_path / "pg")[0], data) == {}  # PGGAN: WGAN-GP loss


def test_a_generator_that_returns_training_images_is_flagged_as_memorizing(run, tmp_path, monkeypatch):
    """FD-DINOv2 evaluation (random-initialized ViT-S/14) of the same checkpoints with the generator replaced by one
    that returns the training images verbatim, and by one that returns noise."""
    import shutil

    import tasks.evaluation.evaluate as ev
    from tasks.evaluation.dinov2 import write_random_weights
    from tasks.evaluation.metrics import source_batches

    root, data, _, _ = run
    dinov2 = write_random_weights(tmp_path / "dinov2-random.pt")
    p = EvaluateParams(metrics=("fd_dinov2",), n_fake=10, batch=10, kid=False, cache_dir=str(tmp_path / "cache"))

    def copier(G, arch, n, batch=64, **_):
        yield from source_batches(data, batch, n)  # the 10 training images, pixel for pixel

    def noise(G, arch, n, batch=64, **_):
        yield torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    results = {}
    for name, generator in (("copier", copier), ("noise", noise)):
        run_dir = tmp_path / name
        shutil.copytree(root / "run" / "checkpoints", run_dir / "checkpoints")
        monkeypatch.setattr(ev, "generated_batches", generator)
        results[name] = ev.evaluate_run(run_dir, data, None, p, dinov2_weights=dinov2), read_fid_csv(run_dir)

    out, rows = results["copier"]
    assert [r["memorized"] for r in rows] == [1.0, 1.0]
    assert [(r["precision"], r["recall"]) for r in rows] == [(1.0, 1.0), (1.0, 1.0)]  # identical sets
    assert sorted(out.memorizing) == [0.004, 0.008] and "every snapshot is flagged" in out.best.why
    assert out.memorization["features"] == "dinov2-vits14" and out.memorization["n_train"] == 10
    assert all(r["fid"] is None and r["fd_dinov2"] is not None for r in rows)
    assert out.best.rank_by == "fd_dinov2" and out.best.score == min(r["fd_dinov2"] for r in rows)
    assert out.scores["fid"] is None and abs(out.scores["fd_dinov2"]) < 1e-3  # the training set against itself

    out, rows = results["noise"]
    assert [r["memorized"] for r in rows] == [0.0, 0.0] and out.memorizing == {}
    assert all(r["precision"] == 0.0 for r in rows)
    assert len(list((tmp_path / "cache").glob("real-stats-*.pt"))) == 1  # training features: once per dataset
    assert out.scores["fd_dinov2"] > results["copier"][0].scores["fd_dinov2"]


def test_the_summary_prints_as_metrics_json_held_it():
    """EvaluationSummary.to_dict: the keys in the order `ganflow evaluate` has always printed them; fid and kid even
    when None, other scores and details only when there; flagged kimgs as short strings."""
    from tasks.evaluation.evaluate import BestSnapshot, EvaluationSummary

    summary = EvaluationSummary(
        kimg=1000.5, scores={"fid": None, "kid": None, "fd_dinov2": 310.0, "precision": 0.5, "recall": None,
                             "memorized": 0.125},
        best=BestSnapshot(500.25, "fd_dinov2", 300.0, "lowest FD-DINOv2 among snapshots not flagged", fid=12.5),
        flagged={1000.5: "FID rose 3 snapshots in a row"}, memorizing={}, memorization=None, snapshots=2,
        evaluated_with={"run": "abc"}, n_fake=6, dinov2_sha256="d1", evaluated=[1000.5], skipped={1200.0: "torn"})
    assert json.dumps(summary.to_dict()) == json.dumps({
        "kimg": 1000.5, "fid": None, "kid": None, "fd_dinov2": 310.0, "precision": 0.5, "memorized": 0.125,
        "n_fake": 6, "dinov2_sha256": "d1",
        "best": {"kimg": 500.25, "fd_dinov2": 300.0, "why": "lowest FD-DINOv2 among snapshots not flagged",
                 "file": "best.pt", "fid": 12.5},
        "flagged": {"1000.5": "FID rose 3 snapshots in a row"}, "memorizing": {}, "memorization": None,
        "snapshots": 2, "evaluated_with": {"run": "abc"}, "evaluated": [1000.5], "skipped": {"1200": "torn"}})
    assert set(summary.to_dict()) - set(summary.metrics_json()) == {"evaluated", "skipped"}
