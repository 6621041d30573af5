"""Evaluation of a run's snapshots: FID/KID (and FD-DINOv2, precision/recall, memorization) per snapshot, a
divergence monitor, the best snapshot.

Pure functions (testable without Prefect) and the @task the evaluate flow maps over a run. Files in RUN/:
fid.csv (kimg, fid, kid, ...: one row per evaluated snapshot, for DVC plots), metrics.json (the latest snapshot's
metrics, the best snapshot and flags, for DVC metrics) and best.pt (G_ema + arch of the best snapshot).
evaluate_run returns an EvaluationSummary: metrics_json() is metrics.json, to_dict() what `ganflow evaluate` prints.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.run_dir import BEST, RunDir
from tasks.evaluation import registry
from tasks.evaluation.fid_table import read_fid_csv, row_note, write_fid_csv
from tasks.common.settings import EvaluateSettings


# ------------------------------------------------------------------ divergence monitor and best snapshot
def flag_diverged(history: list[dict], fid_rises: int = 3, d_loss_min: float = 0.05,
                  key: str = "fid") -> dict[float, str]:
    """Snapshots not to trust, {kimg: reason}. A run diverges from the first snapshot of `fid_rises` FID rises
    in a row, or from a snapshot where D's loss has collapsed below `d_loss_min` while G's loss climbed since the
    previous snapshot (when the history has loss_D/loss_G). Every snapshot from there on is flagged: a diverged
    run that dips again later is noise or mode collapse, not recovery."""
    rows = sorted(history, key=lambda r: r["kimg"])
    start, reason = None, ""
    rises = 0
    for i in range(1, len(rows)):
        prev, cur = rows[i - 1], rows[i]
        rises = rises + 1 if cur.get(key) is not None and prev.get(key) is not None and cur[key] > prev[key] else 0
        if fid_rises and rises >= fid_rises:
            start, reason = i - rises + 1, f"{registry.label(key)} rose {rises} snapshots in a row"
            break
        d, g, g_prev = cur.get("loss_D"), cur.get("loss_G"), prev.get("loss_G")
        if None not in (d, g, g_prev) and d < d_loss_min and g > g_prev:  # type: ignore[operator]  # none is None here
            start, reason = i, f"D loss {d:.3g} < {d_loss_min:g} while G loss climbed {g_prev:.3g} → {g:.3g}"
            break
    if start is None:
        return {}
    return {r["kimg"]: reason for r in rows[start:]}


def flag_memorized(history: list[dict], max_memorized: float) -> dict[float, str]:
    """Snapshots whose memorized fraction is above `max_memorized`, {kimg: reason}."""
    return {r["kimg"]: f"{r['memorized']:.0%} of generated images are closer to a training image than the "
                       f"memorization threshold (max_memorized {max_memorized:g})"
            for r in history if r.get("memorized") is not None and r["memorized"] > max_memorized}


def choose_best(history: list[dict], flagged: dict[float, str], key: str = "fid") -> tuple[dict | None, str]:
    """The lowest-`key` snapshot not flagged (diverged or memorizing); when every one is flagged, the lowest
    overall, said so."""
    label = registry.label(key)
    scored = [r for r in history if r.get(key) is not None]
    if not scored:
        return None, f"no snapshot has an {label}"
    trusted = [r for r in scored if r["kimg"] not in flagged]
    if trusted:
        return min(trusted, key=lambda r: r[key]), f"lowest {label} among snapshots not flagged"
    return min(scored, key=lambda r: r[key]), f"every snapshot is flagged: lowest {label} overall"


def export_best(ckpt: str | Path, out: str | Path, extra: dict | None = None) -> Path:
    """out (RUN/best.pt): G_ema and arch only (+ kimg/FID), loadable with weights_only=True and by
    models.generate.load_generator. Written atomically (models.checkpoint.save_atomic)."""
    from models.checkpoint import load_checkpoint, save_atomic

    state = load_checkpoint(ckpt)
    best = {"G_ema": state["G_ema"], "arch": state["arch"], "kimg": float(state.get("kimg", 0.0)),
            "source": Path(ckpt).name, **(extra or {})}
    return save_atomic(best, out)


def evaluation_key(first_ckpt: str | Path, weights_sha256: str | None, p: EvaluateSettings,
                   dinov2_sha256: str | None = None) -> dict:
    """What fid.csv's rows depend on: the run (its settings and dataset, from its first checkpoint), the
    extractors and N. A different key (the run was restarted on new data, other weights) voids the rows."""
    import hashlib

    from models.checkpoint import load_checkpoint
    from tasks.training.run import RESUMABLE_CHANGES

    # mmap: only the config is read here, not the networks and optimizer states (hundreds of MB at 512²)
    config = {k: v for k, v in load_checkpoint(first_ckpt, mmap=True).get("config", {}).items()
              if k not in RESUMABLE_CHANGES}
    run = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    key: dict[str, object] = {"run": run, "weights_sha256": weights_sha256, "n_fake": int(p.n_fake), "n_real": int(p.n_real)}
    if dinov2_sha256:  # absent for Inception-only runs: their rows from before DINOv2 stay valid
        key.update(dinov2_sha256=dinov2_sha256, metrics=list(p.metrics))
    return key


# ------------------------------------------------------------------ per-snapshot metrics
def generated_batches(G, arch: dict, n: int, batch: int, seed0: int = 0,
                      truncation_psi: float = 1.0) -> Iterator[torch.Tensor]:
    """n generated images (seeds seed0 ... seed0+n-1, no truncation by default) as uint8 NCHW batches."""
    from models.generate import images_from_seeds

    for i in range(0, n, batch):
        seeds = list(range(seed0 + i, seed0 + min(i + batch, n)))
        images = images_from_seeds(G, arch, seeds, truncation_psi=truncation_psi, batch=batch)
        yield torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _first_reals(data: str | Path, n: int, resolution: int) -> torch.Tensor:
    """n real images (repeated when the dataset has fewer) at the training resolution (Lanczos, as training)."""
    from PIL import Image

    from tasks.evaluation.metrics import source_batches

    imgs = next(iter(source_batches(data, batch=n, limit=n))).permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.Resampling.LANCZOS))
           if im.shape[0] != resolution else im for im in imgs]
    out = (out * (n // len(out) + 1))[:n]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def discriminator_probe(ckpt: str | Path, data: str | Path, seed: int = 0) -> dict:
    """D's and G's logistic losses at a snapshot, on one batch of reals and of fakes from the snapshot's G
    (what the divergence monitor watches: loss_D → 0 while loss_G climbs). Empty for WGAN/LSGAN runs, whose
    losses do not read that way."""
    import torch.nn.functional as F

    from models.arch import build_arch
    from models.checkpoint import load_checkpoint
    from models.data import to_float
    from models.train_config import from_saved

    state = load_checkpoint(ckpt)
    cfg_dict = dict(state["config"])
    cfg_dict["betas"] = tuple(cfg_dict.get("betas", (0.0, 0.99)))
    cfg = from_saved(cfg_dict)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        arch = build_arch(cfg)
        if arch.loss != "logistic":
            return {}
        arch.G.load_state_dict(state["G"])
        arch.D.load_state_dict(state["D"])
        G, D = arch.G.eval(), arch.D.eval()
        nimg = int(state["nimg"])
        n = arch.batch
        reals = arch.prepare_reals(to_float(_first_reals(data, n, cfg.resolution)), nimg)
        fakes = arch.generate(G, torch.randn(n, arch.z_dim), nimg, update_stats=False)
        real_logits, fake_logits = arch.discriminate(D, reals, nimg), arch.discriminate(D, fakes, nimg)
    loss_d = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
    return {"loss_D": float(loss_d), "loss_G": float(F.softplus(-fake_logits).mean())}


def evaluate_snapshot(snapshot: str | Path, data: str | Path, weights: str | Path | None, p: EvaluateSettings,
                      device: str = "cpu", dinov2_weights: str | Path | None = None) -> dict:
    """The metrics of one network file against data (p.metrics: FID and/or FD-DINOv2, KID, precision/recall): a
    checkpoint, a best.pt or an imported NVIDIA network (`ganflow import`), e.g. a pretrained network's distance to
    a dataset before fine-tuning on it. Writes no run files; the real statistics are cached as for evaluate_run."""
    from models.generate import load_generator
    from tasks.evaluation.metrics import extract_each, feature_spaces, read_weights, real_stats_each, scores

    G, arch = load_generator(snapshot)
    inception = read_weights(weights, p.inception_sha256 or None) if "fid" in p.metrics and weights is not None else None
    spaces = feature_spaces(p.metrics, inception, dinov2_weights, p.inception_sha256 or None,
                            p.dinov2_sha256 or None, device)
    reals = real_stats_each(data, spaces, p.cache_dir or None, p.n_real or None, p.kid, p.batch, device)
    fakes = extract_each(spaces, generated_batches(G.to(device), arch, p.n_fake, p.batch), device)
    m = scores(spaces, {k: v[0] for k, v in reals.items()}, fakes, p.kid, p.kid_subsets, p.kid_subset_size)
    notes = [s.note for s in spaces if s.note]
    return {**m, "snapshot": str(snapshot), "arch": arch["name"],
            "real_stats_cached": all(c for _s, c in reals.values()),
            **{("weights_sha256" if s.metric == "fid" else "dinov2_sha256"): s.sha256 for s in spaces},
            **({"extractor": "; ".join(notes)} if notes else {})}


def _previous_metrics(run_dir: Path, warn: Callable[[str], None]) -> dict:
    path = RunDir(run_dir).metrics
    if not path.exists():
        return {}
    try:
        out = json.loads(path.read_text())
        if isinstance(out, dict):
            return out
    except (OSError, ValueError):
        pass
    warn(f"{path} is unreadable: every snapshot is evaluated again")
    return {}


def _previous_rows(run_dir: Path, warn: Callable[[str], None]) -> list[dict]:
    try:
        rows = read_fid_csv(run_dir)
    except (OSError, ValueError, KeyError) as e:
        warn(f"{RunDir(run_dir).fid_csv} is unreadable ({type(e).__name__}): every snapshot is evaluated again")
        return []
    return [r for r in rows if r["kimg"] is not None]


def _first_key(snapshots: list[tuple[float, Path]], weights_sha: str | None, p: EvaluateSettings,
               skipped: dict[float, str], dinov2_sha: str | None = None) -> dict:
    """The evaluation key from the oldest checkpoint that loads (unreadable ones recorded in `skipped`)."""
    from models.checkpoint import CheckpointError

    for kimg, path in snapshots:
        try:
            return evaluation_key(path, weights_sha, p, dinov2_sha)
        except CheckpointError as e:
            skipped[kimg] = str(e)
    raise CheckpointError(f"no checkpoint of {Path(snapshots[0][1]).parent} loads: {'; '.join(skipped.values())}")


# ------------------------------------------------------------------ the summary of an evaluation
LATEST_KEYS = ("kid_std", "n_real", "n_fake", "warning", "weights_sha256", "dinov2_sha256", "audit_features")


@dataclass(frozen=True)
class BestSnapshot:
    """The snapshot exported as RUN/best.pt."""
    kimg: float
    rank_by: str                 # the column it was chosen by: fid, else fd_dinov2 (EvaluateSettings.rank_by)
    score: float                 # its value in that column
    why: str                     # why this one (choose_best)
    fid: float | None = None     # its FID too, when ranked by another column

    def to_dict(self) -> dict:
        return {"kimg": self.kimg, self.rank_by: self.score, "why": self.why, "file": BEST,
                **({"fid": self.fid} if self.rank_by != "fid" and self.fid is not None else {})}


@dataclass(frozen=True)
class EvaluationSummary:
    """What evaluate_run found: the latest snapshot's scores, the best snapshot, the flags (metrics.json holds all
    of that, metrics_json()), and what this evaluation did (evaluated, skipped). to_dict() is what `ganflow evaluate`
    prints and the evaluate flow returns. None means absent: metrics.json leaves such a key out."""
    kimg: float                                   # the latest evaluated snapshot
    scores: dict[str, float | None]               # its fid.csv scores, by column (the registry's summary columns)
    best: BestSnapshot | None
    flagged: dict[float, str]                     # diverged snapshots: {kimg: why}
    memorizing: dict[float, str]                  # snapshots over evaluate.max_memorized: {kimg: why}
    memorization: dict | None                     # the audit: threshold τ, quantile, features, n_train, max_memorized
    snapshots: int                                # rows in fid.csv
    evaluated_with: dict                          # what the rows depend on (evaluation_key)
    extractor: str | None = None                  # the extractors' notes
    # The latest snapshot's details (LATEST_KEYS), as its evaluation reported them.
    kid_std: float | None = None
    n_real: int | None = None
    n_fake: int | None = None
    warning: str | None = None                    # the small-N note
    weights_sha256: str | None = None
    dinov2_sha256: str | None = None
    audit_features: str | None = None             # the feature space of precision/recall and the audit
    evaluated: list[float] = field(default_factory=list)     # kimgs evaluated by this call
    skipped: dict[float, str] = field(default_factory=dict)  # snapshots that do not load: {kimg: why}

    def metrics_json(self) -> dict:
        """RUN/metrics.json (DVC metrics): the always-shown scores (fid, kid), the others and the details when there
        are any."""
        always = {c.name for c in registry.columns() if c.always}
        return {"kimg": self.kimg,
                **{k: v for k, v in self.scores.items() if v is not None or k in always},
                **{k: getattr(self, k) for k in LATEST_KEYS if getattr(self, k) is not None},
                "best": self.best.to_dict() if self.best else None,
                "flagged": {f"{k:g}": why for k, why in self.flagged.items()},
                "memorizing": {f"{k:g}": why for k, why in self.memorizing.items()},
                "memorization": self.memorization,
                "snapshots": self.snapshots,
                "evaluated_with": self.evaluated_with,
                **({"extractor": self.extractor} if self.extractor is not None else {})}

    def to_dict(self) -> dict:
        return {**self.metrics_json(), "evaluated": list(self.evaluated),
                "skipped": {f"{k:g}": why for k, why in sorted(self.skipped.items())}}


# ------------------------------------------------------------------ evaluating a run
@dataclass(frozen=True)
class RealReference:
    """What every snapshot of one evaluation is measured against, built once: the extractors, the real statistics
    and the memorization audit's training features."""
    spaces: list                   # metrics.FeatureSpace, one per metric
    reals: dict                    # {metric: the real images' metrics.Stats}
    cached: bool                   # every real statistic came from the cache
    audit_metric: str              # the space precision/recall and the audit are measured in
    train: np.ndarray              # the training images' features there
    radii: np.ndarray | None       # their distances to their K-th neighbour (None below K+1 images)
    tau: float | None              # the memorization threshold (None below 2 images)
    memorization: dict             # the audit's settings, as metrics.json records them


def real_reference(data: str | Path, spaces: list, p: EvaluateSettings, device: str = "cpu") -> RealReference:
    """The reference in `spaces` (metrics.feature_spaces) for the dataset `data`: its statistics (cached in
    p.cache_dir), and the training features, radii and τ of the memorization audit."""
    from tasks.evaluation.audit import K, kth_neighbour_distance, memorization_threshold
    from tasks.evaluation.metrics import audit_space, real_stats_each

    reals = real_stats_each(data, spaces, p.cache_dir or None, p.n_real or None, p.kid, p.batch, device)
    audit = audit_space(spaces)
    train = reals[audit.metric][0].features  # the training images' features (cached with the real statistics)
    assert train is not None, "real statistics are computed with their features (keep_features)"
    tau = memorization_threshold(train, p.memorized_quantile) if len(train) > 1 else None
    return RealReference(spaces=spaces, reals={k: v[0] for k, v in reals.items()},
                         cached=all(c for _s, c in reals.values()), audit_metric=audit.metric, train=train,
                         radii=kth_neighbour_distance(train, K) if len(train) > K else None, tau=tau,
                         memorization={"threshold": tau, "quantile": p.memorized_quantile, "features": audit.name,
                                       "n_train": len(train), "max_memorized": p.max_memorized})


def snapshot_metrics(G, arch: dict, ref: RealReference, p: EvaluateSettings, device: str = "cpu",
                     probe: dict | None = None) -> dict:
    """One generator's metrics against the reference: the registered metrics (tasks.evaluation.registry: FID and/or
    FD-DINOv2, KID, precision/recall, `memorized`, the fraction of its images closer than τ to a training image,
    and the discriminator probe's losses), counts and the small-N note."""
    from tasks.evaluation.metrics import extract_each, scores

    fakes = extract_each(ref.spaces, generated_batches(G.to(device), arch, p.n_fake, p.batch), device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small-N note is recorded in metrics.json
        return scores(ref.spaces, ref.reals, fakes, p.kid, p.kid_subsets, p.kid_subset_size, ref.radii,
                      registry.Memorization(ref.tau, p.memorized_quantile), probe)


def fid_row(kimg: float, m: dict) -> dict:
    """A snapshot's fid.csv row from its metrics: the registered metrics' columns."""
    return {"kimg": kimg, **registry.row(m)}


def _evaluate_snapshots(run_dir: Path, todo: list[tuple[float, Path]], data: str | Path, ref: RealReference,
                        p: EvaluateSettings, device: str, rows: list[dict], skipped: dict[float, str], hashes: dict,
                        progress: Callable[[dict], None] | None) -> tuple[list[float], dict | None]:
    """Each snapshot of `todo` gets a row in `rows`, and fid.csv is rewritten after each (an interrupted evaluation
    keeps what it did); one that does not load goes to `skipped`. Returns the kimgs evaluated and the last one's
    metrics (what `progress` got)."""
    from models.checkpoint import CheckpointError
    from models.generate import load_generator

    evaluated, detail = [], None
    for kimg, path in todo:
        try:
            G, arch = load_generator(path)
            probe = discriminator_probe(path, data)
        except (CheckpointError, KeyError, TypeError) as e:  # torn, planted or not a training checkpoint
            skipped[kimg] = f"{e}" if isinstance(e, CheckpointError) else \
                f"{path} is not a training checkpoint ({type(e).__name__}: {e})"
            continue
        m = snapshot_metrics(G, arch, ref, p, device, probe)
        rows.append(fid_row(kimg, m))
        write_fid_csv(run_dir, rows)
        evaluated.append(kimg)
        detail = {**m, "kimg": kimg, "real_stats_cached": ref.cached, **hashes}
        if progress:
            progress(dict(detail))
    return evaluated, detail


def rank_snapshots(rows: list[dict], p: EvaluateSettings) -> tuple[dict[float, str], dict[float, str],
                                                                  BestSnapshot | None]:
    """(diverged, memorizing, best): the divergence monitor's and the audit's flags, and the best snapshot not
    flagged."""
    diverged = flag_diverged(rows, p.diverge_fid_rises, p.diverge_d_loss, p.rank_by)
    memorizing = flag_memorized(rows, p.max_memorized)
    best, why = choose_best(rows, {**memorizing, **diverged}, p.rank_by)
    if best is None:
        return diverged, memorizing, None
    fid = best.get("fid") if p.rank_by != "fid" else None
    return diverged, memorizing, BestSnapshot(best["kimg"], p.rank_by, best[p.rank_by], why, fid)


def _export_best(run_dir: Path, snapshots: list[tuple[float, Path]], best: BestSnapshot,
                 warn: Callable[[str], None]) -> None:
    from models.checkpoint import CheckpointError

    ckpt = dict(snapshots).get(best.kimg)  # None when that checkpoint was deleted since
    if ckpt is not None:
        try:
            export_best(ckpt, RunDir(run_dir).best, {best.rank_by: best.score})
        except CheckpointError as e:  # unreadable since it was evaluated: the old best.pt stays
            warn(f"best.pt not exported: {e}")


def write_metrics_json(run_dir: Path, summary: EvaluationSummary) -> Path:
    path = RunDir(run_dir).metrics
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary.metrics_json(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def evaluate_run(run_dir: str | Path, data: str | Path, weights: str | Path | None, p: EvaluateSettings,
                 device: str = "cpu", progress: Callable[[dict], None] | None = None,
                 dinov2_weights: str | Path | None = None, warn: Callable[[str], None] | None = None
                 ) -> EvaluationSummary:
    """Evaluate every snapshot of run_dir that fid.csv has no row for; then flag diverged and memorizing snapshots,
    export the best one as best.pt and write metrics.json. `weights`: Inception's file (None without "fid" in
    p.metrics), `dinov2_weights`: DINOv2's (with "fd_dinov2"). Snapshots that do not load are skipped, each passed
    to `warn` (default warnings.warn)."""
    from models.checkpoint import CheckpointError, list_checkpoints
    from tasks.evaluation.metrics import feature_spaces, read_weights, sha256_file

    warn = warn or (lambda message: warnings.warn(message, stacklevel=3))
    run_dir = Path(run_dir)
    snapshots = list_checkpoints(run_dir)
    if not snapshots:
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ckpt-*.pt to evaluate")
    previous = _previous_metrics(run_dir, warn)
    # Read once: the Inception bytes hashed for the key are the bytes its extractor is built from.
    inception = read_weights(weights, p.inception_sha256 or None) if "fid" in p.metrics and weights is not None else None
    hashes = {"weights_sha256": inception.sha256 if inception is not None else None,
              "dinov2_sha256": sha256_file(dinov2_weights) if "fd_dinov2" in p.metrics and dinov2_weights is not None
              else None}
    skipped: dict[float, str] = {}
    key = _first_key(snapshots, hashes["weights_sha256"], p, skipped, hashes["dinov2_sha256"])
    rows = _previous_rows(run_dir, warn) if previous.get("evaluated_with") == key else []  # else: everything again
    done = {r["kimg"] for r in rows}
    todo = [(k, path) for k, path in snapshots if k not in done and k not in skipped]
    evaluated: list[float] = []
    latest: dict | None = None
    ref: RealReference | None = None
    if todo:
        spaces = feature_spaces(p.metrics, inception, dinov2_weights, p.inception_sha256 or None,
                                p.dinov2_sha256 or None, device)
        del inception  # ~100 MB: the extractor holds the weights now
        ref = real_reference(data, spaces, p, device)
        evaluated, latest = _evaluate_snapshots(run_dir, todo, data, ref, p, device, rows, skipped, hashes, progress)
    for kimg, why in sorted(skipped.items()):
        warn(f"skipped the snapshot at {kimg:g} kimg: {why}")
    if not rows:
        raise CheckpointError(f"no snapshot of {run_dir} could be evaluated: {'; '.join(skipped.values())}")
    rows.sort(key=lambda r: r["kimg"])
    diverged, memorizing, best = rank_snapshots(rows, p)
    if best is not None:
        _export_best(run_dir, snapshots, best, warn)
    summary = _summary(rows, previous, latest, ref, diverged, memorizing, best, key, evaluated, skipped)
    write_metrics_json(run_dir, summary)
    return summary


def _summary(rows: list[dict], previous: dict, latest: dict | None, ref: RealReference | None,
             diverged: dict[float, str], memorizing: dict[float, str], best: BestSnapshot | None, key: dict,
             evaluated: list[float], skipped: dict[float, str]) -> EvaluationSummary:
    """The summary of a run's rows (sorted). The latest row's details come from its evaluation (`latest`) when it was
    evaluated now, else from the previous metrics.json; so do the audit and the extractors' notes when nothing was
    evaluated now (`ref` None)."""
    last = rows[-1]
    if latest is not None and latest["kimg"] == last["kimg"]:  # evaluated now
        details = {k: latest[k] for k in LATEST_KEYS if latest.get(k) is not None}
    else:
        details = {k: previous[k] for k in LATEST_KEYS if k in previous}
    if ref is not None:
        memorization, extractor = ref.memorization, "; ".join(s.note for s in ref.spaces if s.note) or None
    else:
        memorization, extractor = previous.get("memorization"), previous.get("extractor")
    scores = {c.name: last.get(c.name) for c in registry.columns() if c.summary}
    return EvaluationSummary(kimg=last["kimg"], scores=scores, best=best, flagged=diverged, memorizing=memorizing, memorization=memorization,
                             snapshots=len(rows), evaluated_with=key, extractor=extractor, evaluated=evaluated,
                             skipped=skipped, **details)


# ------------------------------------------------------------------ what the UI shows
def fid_table_rows(rows: list[dict], flagged: dict, best_kimg: float | None, memorizing=()) -> list[dict]:
    """The FID-over-kimg table for a Prefect table artifact: the registered metrics' labelled columns (each only
    when some row has a value for it, or always shown)."""
    shown = [c for c in registry.labelled() if c.always or any(r.get(c.name) is not None for r in rows)]
    return [{"kimg": f"{r['kimg']:g}",
             **{c.label: c.fmt.format(r[c.name]) if r.get(c.name) is not None else "–" for c in shown},
             "note": row_note(r["kimg"], best_kimg, flagged, memorizing)}
            for r in sorted(rows, key=lambda r: r["kimg"])]


def resolve_weight_paths(p: EvaluateSettings, inception_cli: str | None = None,
                        dinov2_cli: str | None = None) -> tuple[Path | None, Path | None]:
    """(Inception weights, DINOv2 weights) that p.metrics need, None for one not needed; raises
    InceptionWeightsError / DinoV2WeightsError saying which file to put where."""
    from tasks.evaluation import dinov2
    from tasks.evaluation import metrics

    return (metrics.resolve_weights(inception_cli, p.inception_weights) if "fid" in p.metrics else None,
            dinov2.resolve_weights(dinov2_cli, p.dinov2_weights) if "fd_dinov2" in p.metrics else None)


def weights_or_reason(p: EvaluateSettings, inception_cli: str | None = None,
                      dinov2_cli: str | None = None) -> tuple[Path | None, Path | None, str]:
    """resolve_weight_paths, or (None, None, why) for callers that skip evaluation rather than fail."""
    from tasks.evaluation.dinov2 import DinoV2WeightsError
    from tasks.evaluation.metrics import InceptionWeightsError

    try:
        return (*resolve_weight_paths(p, inception_cli, dinov2_cli), "")
    except (InceptionWeightsError, DinoV2WeightsError) as e:
        return None, None, str(e)


def progress_line(m: dict) -> str:
    """One snapshot's scores, for the CLI and the flow's log."""
    parts = [f"{m['kimg']:g} kimg:"]
    for c in registry.labelled():
        if m.get(c.source) is not None:
            parts.append(f"{c.label} {c.fmt.format(m[c.source])}")
    return " ".join(parts) + f" (N real {m['n_real']}, fake {m['n_fake']})"


# ------------------------------------------------------------------ Prefect

@task(name="evaluate-snapshots", cache_policy=NO_CACHE)  # results live in RUN/fid.csv
def evaluate_task(run_dir: str, data: str, weights: str | None, p: EvaluateSettings, device: str = "cpu",
                  dinov2_weights: str | None = None) -> dict:
    """FID/KID (FD-DINOv2, precision/recall, memorization) for every snapshot of run_dir not evaluated yet;
    best.pt and metrics.json; artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.training.report import artifact_key, thumbnail_data_uri

    logger = get_run_logger()

    def progress(m: dict) -> None:
        logger.info("%s", progress_line(m))

    summary = evaluate_run(run_dir, data, weights, p, device=device, progress=progress, warn=logger.warning,
                           dinov2_weights=dinov2_weights)
    if summary.warning:
        logger.warning(summary.warning)
    rows = read_fid_csv(run_dir)
    flagged, memorizing, best = summary.flagged, summary.memorizing, summary.best
    key = artifact_key(run_dir).replace("train-", "fid-", 1)
    create_table_artifact(key=key, table=fid_table_rows(rows, flagged, best.kimg if best else None, memorizing),
                          description=f"FID over kimg for {run_dir} (best: {best.kimg if best else '–'} kimg)")
    samples = RunDir(run_dir).sample_grids()
    lines = [f"### Evaluation of {run_dir}", "",
             f"Best snapshot: {best.kimg} kimg, {registry.label(best.rank_by)} {best.score:.4f} ({best.why}) → "
             f"`{RunDir(run_dir).best}`" if best else "No best snapshot."]
    if flagged:
        lines += ["", "Flagged as diverged: " + ", ".join(f"{k:g} kimg" for k in sorted(flagged))]
    if memorizing:
        lines += ["", "Flagged as memorizing: " + "; ".join(f"{k:g} kimg ({v})" for k, v in sorted(memorizing.items()))]
    mem = summary.memorization or {}
    if mem.get("threshold") is not None:
        lines += ["", f"Memorization threshold τ = {mem['threshold']:.4g} ({mem['quantile']:g} quantile of the "
                      f"training images' nearest-neighbour distances in {mem['features']} features)"]
    if summary.warning:
        lines += ["", f"Note: {summary.warning}"]
    if samples:
        lines += ["", f"![newest samples]({thumbnail_data_uri(samples[-1])})"]
    create_markdown_artifact(key=key + "-summary", markdown="\n".join(lines) + "\n")
    return summary.to_dict()  # a Prefect result: plain JSON data
