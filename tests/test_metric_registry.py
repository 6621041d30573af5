"""The metric registry: fid.csv's columns, metrics.json's metric keys, the FID table and the progress line are the
registered metrics', and a metric registered once is computed, written and shown everywhere."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tasks.evaluation import registry
from tasks.evaluation.evaluate import choose_best, evaluate_run, fid_table_rows, flag_diverged, progress_line
from tasks.evaluation.fid_table import parse_fid_csv, read_fid_csv
from tasks.common.settings import EvaluateSettings
from tests.test_evaluate import run  # noqa: F401  (the tiny two-snapshot run, trained once for this module)

BUILTIN_CSV = ("kimg", "fid", "kid", "loss_D", "loss_G", "fd_dinov2", "precision", "recall", "memorized")


@pytest.fixture()
def mean_norm():
    """A metric registered for one test: the mean L2 norm of the generated features in KID's space."""

    @registry.register("mean_norm", "first", (registry.Column("mean_norm", label="mean norm", fmt="{:.2f}"),),
                       order=70)
    def mean_norm(s: registry.Snapshot, space) -> dict:
        return {"mean_norm": float(np.linalg.norm(s.fakes[space.metric], axis=1).mean())}

    yield mean_norm
    registry.unregister("mean_norm")


def test_builtin_metrics_give_fid_csv_its_columns_in_order():
    assert registry.csv_fields() == BUILTIN_CSV
    assert [(m.name, m.space) for m in registry.registered()] == [
        ("fid", "inception"), ("kid", "first"), ("losses", "checkpoint"), ("fd_dinov2", "dinov2"),
        ("precision_recall", "audit"), ("memorized", "audit")]
    assert [c.name for c in registry.columns() if c.summary] == ["fid", "kid", "fd_dinov2", "precision", "recall",
                                                                  "memorized"]


def test_a_registered_metric_is_computed_written_and_shown(run, mean_norm, tmp_path):  # noqa: F811
    root, data, weights, _ = run
    run_dir = tmp_path / "run"
    shutil.copytree(root / "run" / "checkpoints", run_dir / "checkpoints")
    p = EvaluateSettings(n_fake=6, batch=6, kid_subsets=5, kid_subset_size=5, cache_dir=str(tmp_path / "cache"))
    seen = []
    out = evaluate_run(run_dir, data, weights, p, progress=seen.append, warn=lambda _: None).to_dict()

    header = (run_dir / "fid.csv").read_text().splitlines()[0]
    assert header.split(",") == [*BUILTIN_CSV, "mean_norm"]
    rows = read_fid_csv(run_dir)
    assert len(rows) == 2 and all(r["mean_norm"] > 0 for r in rows)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    keys = list(metrics)
    assert metrics["mean_norm"] == rows[-1]["mean_norm"] == out["mean_norm"]
    assert keys.index("memorized") + 1 == keys.index("mean_norm")  # after the built-in metrics, in registry order
    table = fid_table_rows(rows, {}, None)
    assert list(table[0]) == ["kimg", "FID", "KID", "precision", "recall", "memorized", "mean norm", "note"]
    assert table[0]["mean norm"] == f"{rows[0]['mean_norm']:.2f}"
    assert f"mean norm {rows[-1]['mean_norm']:.2f}" in progress_line(seen[-1])

    registry.unregister("mean_norm")  # the file written with it still reads, without its column
    assert registry.csv_fields() == BUILTIN_CSV and "mean_norm" not in read_fid_csv(run_dir)[0]


def test_a_metric_is_computed_only_where_its_features_were_extracted(mean_norm):
    """fd_dinov2 reads DINOv2's features: an Inception-only evaluation leaves its column empty."""
    from tasks.evaluation.metrics import FeatureSpace, Stats

    rng = np.random.default_rng(0)
    reals, fakes = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    space = FeatureSpace("fid", "2048", None, "sha")
    values = registry.compute(registry.Snapshot([space], {"fid": Stats.of(reals, keep_features=True)},
                                                {"fid": fakes}))
    assert set(values) == {"fid", "precision", "recall", "mean_norm"}  # no KID asked, no probe, no memorization
    row = registry.row(values)
    assert list(row) == [*BUILTIN_CSV[1:], "mean_norm"] and row["fd_dinov2"] is None and row["kid"] is None


def test_the_monitor_and_the_best_snapshot_name_a_metric_by_its_registered_label(mean_norm):
    assert [registry.label(k) for k in ("fid", "kid", "fd_dinov2", "loss_D")] == ["FID", "KID", "FD-DINOv2", "loss_D"]
    assert [c.name for c in registry.labelled()] == ["fid", "kid", "fd_dinov2", "precision", "recall", "memorized",
                                                     "mean_norm"]
    with pytest.raises(registry.MetricError, match="no registered metric fills a column 'is'"):
        registry.label("is")
    h = [{"kimg": float(k), "mean_norm": v} for k, v in ((10, 5.0), (20, 6.0), (30, 7.0), (40, 8.0))]
    assert flag_diverged(h, fid_rises=3, key="mean_norm")[40.0] == "mean norm rose 3 snapshots in a row"
    assert choose_best(h, {}, key="mean_norm") == (h[0], "lowest mean norm among snapshots not flagged")


def test_bad_registrations_are_refused():
    with pytest.raises(registry.MetricError, match="feature space"):
        registry.register("is", "clip", (registry.Column("is"),), order=80)
    with pytest.raises(registry.MetricError, match="already filled by 'fid'"):
        registry.register("fid2", "inception", (registry.Column("fid"),), order=80)(lambda s, space: {})
    assert registry.csv_fields() == BUILTIN_CSV
    assert parse_fid_csv("kimg,fid\n4.0,1.5\n")[0] == {**dict.fromkeys(BUILTIN_CSV), "kimg": 4.0, "fid": 1.5}
