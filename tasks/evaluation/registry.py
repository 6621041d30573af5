"""The per-snapshot metrics, each registered once with the feature space it reads, how it is computed and the
columns it fills: fid.csv's columns (in registry order), metrics.json's metric keys, the FID tables' columns (the
evaluation's artifact, `ganflow serve`'s JSON and page) and the progress line all come from here.

No torch at import (fid_table, the web page and the CLI read the columns): each compute function imports what
it needs. Adding a metric: one `@register(...)` function; its columns appear in fid.csv, metrics.json and the
tables. fid.csv's column order is the registry order, so a new metric takes an order after the existing ones.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Which extracted features a metric reads: Inception's or DINOv2's (each present when evaluate.metrics asks for
# its Fréchet distance), "first" (Inception's when computed, else DINOv2's: KID), "audit" (DINOv2's when computed,
# else Inception's: precision/recall, memorization), or "checkpoint" (no features: the snapshot's networks).
SPACES = ("inception", "dinov2", "first", "audit", "checkpoint")


class MetricError(ValueError):
    """A metric registered twice, with an unknown feature space, or a column another metric fills."""


@dataclass(frozen=True)
class Column:
    name: str                 # fid.csv column and metrics.json key
    key: str = ""             # key of the metric's computed values it shows ("" = name)
    label: str | None = None  # title in tables and the progress line (None: not shown there)
    fmt: str = "{:.4f}"
    summary: bool = True      # in metrics.json (the latest snapshot's value)
    always: bool = False      # in metrics.json and the table even when no snapshot has a value

    @property
    def source(self) -> str:
        return self.key or self.name


@dataclass(frozen=True)
class Metric:
    name: str
    space: str                                   # one of SPACES
    compute: Callable[[Snapshot, Any], dict]     # (snapshot, its feature space) -> {key: value}; {} = not asked
    columns: tuple[Column, ...]
    order: int


@dataclass
class Memorization:
    """evaluate_run asks for the memorization audit: τ (None when the training set is too small to give one)."""
    threshold: float | None
    quantile: float


@dataclass
class Snapshot:
    """What a snapshot's metrics are computed from: the real statistics and generated features per space
    (keyed by FeatureSpace.metric), and what the evaluation asked for."""
    spaces: list                          # tasks.evaluation.metrics.FeatureSpace, Inception's first
    reals: dict                           # {space.metric: Stats}
    fakes: dict                           # {space.metric: features [n, D]}
    with_kid: bool = False
    kid_subsets: int | None = None        # evaluate.kid_subsets and kid_subset_size, when with_kid
    kid_subset_size: int | None = None
    real_radii: Any = None                # the reals' k-th neighbour distances in the audit space, when known
    memorization: Memorization | None = None
    probe: dict | None = None             # the discriminator probe's losses (evaluate_run)

    def space(self, role: str):
        """The FeatureSpace a role names, or None when it was not extracted."""
        by_metric = {s.metric: s for s in self.spaces}
        if role == "inception":
            return by_metric.get("fid")
        if role == "dinov2":
            return by_metric.get("fd_dinov2")
        if role == "first":
            return self.spaces[0] if self.spaces else None
        if role == "audit":
            return by_metric.get("fd_dinov2") or (self.spaces[0] if self.spaces else None)
        return None


_METRICS: dict[str, Metric] = {}


def register(name: str, space: str, columns: tuple[Column, ...], order: int):
    """Decorator: register `compute(snapshot, space) -> {key: value}` as a snapshot metric."""
    if space not in SPACES:
        raise MetricError(f"metric {name!r}: feature space must be one of {SPACES}, not {space!r}")

    def decorate(compute):
        taken = {c.name: m.name for m in _METRICS.values() if m.name != name for c in m.columns}
        clash = [c.name for c in columns if c.name in taken]
        if clash:
            raise MetricError(f"metric {name!r}: column {clash[0]!r} is already filled by {taken[clash[0]]!r}")
        _METRICS[name] = Metric(name, space, compute, tuple(columns), order)
        return compute

    return decorate


def unregister(name: str) -> None:
    _METRICS.pop(name, None)


def registered() -> list[Metric]:
    return sorted(_METRICS.values(), key=lambda m: (m.order, m.name))


def selectable() -> tuple[str, ...]:
    """The metrics evaluate.metrics (and --metrics) may name: those with a feature space of their own, each a
    Fréchet distance whose extractor it asks for; the others are computed in whichever spaces those bring."""
    return tuple(m.name for m in registered() if m.space in ("inception", "dinov2"))


def columns() -> list[Column]:
    """Every registered column, in registry order."""
    return [c for m in registered() for c in m.columns]


def labelled() -> list[Column]:
    """The columns with a label, in registry order: those the FID tables (the evaluation's artifact, `ganflow
    serve`'s API and page) and the progress line show."""
    return [c for c in columns() if c.label]


def label(name: str) -> str:
    """The title of the column `name` (its name when it has no label)."""
    for c in columns():
        if c.name == name:
            return c.label or c.name
    raise MetricError(f"no registered metric fills a column {name!r}: one of {[c.name for c in columns()]}")


def csv_fields() -> tuple[str, ...]:
    return ("kimg", *(c.name for c in columns()))


def compute(snapshot: Snapshot) -> dict:
    """Every registered metric whose feature space was extracted, in registry order: {key: value}."""
    out: dict = {}
    for m in registered():
        space = snapshot.space(m.space)
        if m.space != "checkpoint" and space is None:
            continue
        out.update(m.compute(snapshot, space))
    return out


def row(values: dict) -> dict:
    """fid.csv's metric columns from a snapshot's computed values (None where a metric was not computed)."""
    return {c.name: values.get(c.source) for c in columns()}


# ------------------------------------------------------------------ the built-in metrics
@register("fid", "inception", (Column("fid", label="FID", fmt="{:.4f}", always=True),), order=10)
def fid(s: Snapshot, space) -> dict:
    """Fréchet distance in Inception's pool features (torch-fidelity's FID)."""
    from tasks.evaluation.frechet import Stats, fid_from_stats

    return {"fid": fid_from_stats(s.reals[space.metric], Stats.of(s.fakes[space.metric]))}


@register("kid", "first", (Column("kid", key="kid_mean", label="KID", fmt="{:.5f}", always=True),), order=20)
def kid(s: Snapshot, space) -> dict:
    """KID (mean, std over random subsets) when evaluate.kid; kid_std goes to metrics.json with the counts."""
    if not s.with_kid:
        return {}
    from tasks.evaluation.frechet import kid as kid_of

    assert s.kid_subsets is not None and s.kid_subset_size is not None, "with_kid needs the KID settings"
    mean, std = kid_of(s.reals[space.metric].features, s.fakes[space.metric], s.kid_subsets, s.kid_subset_size)
    return {"kid_mean": mean, "kid_std": std}


@register("losses", "checkpoint", (Column("loss_D", summary=False), Column("loss_G", summary=False)), order=30)
def losses(s: Snapshot, space) -> dict:
    """D's and G's logistic losses at the snapshot (evaluate.discriminator_probe; the divergence monitor's)."""
    return dict(s.probe or {})


@register("fd_dinov2", "dinov2", (Column("fd_dinov2", label="FD-DINOv2", fmt="{:.3f}"),), order=40)
def fd_dinov2(s: Snapshot, space) -> dict:
    """Fréchet distance in DINOv2 ViT features."""
    from tasks.evaluation.frechet import Stats, fid_from_stats

    return {"fd_dinov2": fid_from_stats(s.reals[space.metric], Stats.of(s.fakes[space.metric]))}


@register("precision_recall", "audit", (Column("precision", label="precision", fmt="{:.3f}"),
                                        Column("recall", label="recall", fmt="{:.3f}")), order=50)
def precision_recall(s: Snapshot, space) -> dict:
    """Precision and recall (k=3); None below k+1 images on either side."""
    from tasks.evaluation.audit import K
    from tasks.evaluation.audit import precision_recall as pr

    real, fake = s.reals[space.metric].features, s.fakes[space.metric]
    if len(real) > K and len(fake) > K:
        precision, recall = pr(fake, real, K, s.real_radii)
        return {"precision": precision, "recall": recall}
    return {"precision": None, "recall": None}


@register("memorized", "audit", (Column("memorized", label="memorized", fmt="{:.1%}"),), order=60)
def memorized(s: Snapshot, space) -> dict:
    """The fraction of generated images closer to a training image than τ (when the evaluation asks)."""
    if s.memorization is None:
        return {}
    if s.memorization.threshold is None:
        return {"memorized": None}
    from tasks.evaluation.audit import memorized as memorized_of

    train = s.reals[space.metric].features
    return {"memorized": memorized_of(s.fakes[space.metric], train, s.memorization.threshold,
                                      s.memorization.quantile).fraction}
