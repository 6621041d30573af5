"""Evaluation of a run's snapshots: FID/KID per snapshot, a divergence monitor, the best snapshot.

Pure functions (testable without Prefect) and the @task the evaluate flow maps over a run. Files in RUN/:
fid.csv (kimg, fid, kid: one row per evaluated snapshot, for DVC plots), metrics.json (the latest snapshot's
metrics, the best snapshot and flags, for DVC metrics) and best.pt (G_ema + arch of the best snapshot).
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.fid_table import BEST, METRICS_JSON, read_fid_csv, row_note, write_fid_csv
from tasks.params import ParamsError


@dataclass(frozen=True)
class EvaluateParams:
    inception_weights: str = ""   # path of torch-fidelity's InceptionV3 weights ("" = $GANFLOW_INCEPTION_WEIGHTS)
    inception_sha256: str = ""    # expected sha256 of that file ("" = not checked beyond weights_only)
    n_fake: int = 10000           # generated images per snapshot evaluation (papers: 50000)
    n_real: int = 0               # real images for the statistics; 0 = all
    batch: int = 64               # images per extractor batch
    kid: bool = True              # also KID
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    cache_dir: str = "data/cache/fid"
    diverge_fid_rises: int = 3    # flag a snapshot after FID rose this many snapshots in a row
    diverge_d_loss: float = 0.05  # flag when D loss falls below this while G loss climbs

    def __post_init__(self) -> None:
        if int(self.n_fake) < 2 or int(self.batch) < 1 or int(self.n_real) < 0:
            raise ParamsError(f"evaluate: n_fake must be >= 2, batch >= 1 and n_real >= 0 (got n_fake={self.n_fake}, "
                              f"batch={self.batch}, n_real={self.n_real})")


def evaluate_params(path: str | Path = "params.yaml") -> EvaluateParams:
    """The `evaluate` section; missing keys (or a missing section/file) take the defaults above."""
    path = Path(path)
    section = (yaml.safe_load(path.read_text()) or {}).get("evaluate") if path.exists() else None
    section = section or {}
    known = {f.name for f in fields(EvaluateParams)}
    unknown = set(section) - known
    if unknown:
        raise ParamsError(f"{path}: unknown evaluate key(s) {sorted(unknown)}; known: {sorted(known)}")
    values = {k: ("" if v is None else v) for k, v in section.items()}
    return EvaluateParams(**values)


# ------------------------------------------------------------------ divergence monitor and best snapshot
def flag_diverged(history: list[dict], fid_rises: int = 3, d_loss_min: float = 0.05) -> dict[float, str]:
    """Snapshots not to trust, {kimg: reason}. A run diverges from the first snapshot of `fid_rises` FID rises
    in a row, or from a snapshot where D's loss has collapsed below `d_loss_min` while G's loss climbed since the
    previous snapshot (when the history has loss_D/loss_G). Every snapshot from there on is flagged: a diverged
    run that dips again later is noise or mode collapse, not recovery."""
    rows = sorted(history, key=lambda r: r["kimg"])
    start, reason = None, ""
    rises = 0
    for i in range(1, len(rows)):
        prev, cur = rows[i - 1], rows[i]
        rises = rises + 1 if cur.get("fid") is not None and prev.get("fid") is not None and cur["fid"] > prev["fid"] else 0
        if fid_rises and rises >= fid_rises:
            start, reason = i - rises + 1, f"FID rose {rises} snapshots in a row"
            break
        d, g, g_prev = cur.get("loss_D"), cur.get("loss_G"), prev.get("loss_G")
        if None not in (d, g, g_prev) and d < d_loss_min and g > g_prev:
            start, reason = i, f"D loss {d:.3g} < {d_loss_min:g} while G loss climbed {g_prev:.3g} → {g:.3g}"
            break
    if start is None:
        return {}
    return {r["kimg"]: reason for r in rows[start:]}


def choose_best(history: list[dict], flagged: dict[float, str]) -> tuple[dict | None, str]:
    """The lowest-FID snapshot not flagged; when every one is flagged, the lowest overall, said so."""
    scored = [r for r in history if r.get("fid") is not None]
    if not scored:
        return None, "no snapshot has an FID"
    trusted = [r for r in scored if r["kimg"] not in flagged]
    if trusted:
        return min(trusted, key=lambda r: r["fid"]), "lowest FID among snapshots not flagged as diverged"
    return min(scored, key=lambda r: r["fid"]), "every snapshot is flagged as diverged: lowest FID overall"


def export_best(ckpt: str | Path, out: str | Path, extra: dict | None = None) -> Path:
    """out (RUN/best.pt): G_ema and arch only (+ kimg/FID), loadable with weights_only=True and by
    models.generate.load_generator. Written to a temp file, then renamed."""
    from models.checkpoint import load_checkpoint

    state = load_checkpoint(ckpt)
    best = {"G_ema": state["G_ema"], "arch": state["arch"], "kimg": float(state.get("kimg", 0.0)),
            "source": Path(ckpt).name, **(extra or {})}
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:  # a file object: the bytes do not depend on the file's name
        torch.save(best, f)
    os.replace(tmp, out)
    return out


def evaluation_key(first_ckpt: str | Path, weights_sha256: str, p: EvaluateParams) -> dict:
    """What fid.csv's rows depend on: the run (its settings and dataset, from its first checkpoint), the
    extractor and N. A different key (the run was restarted on new data, other weights) voids the rows."""
    import hashlib

    from models.checkpoint import load_checkpoint
    from tasks.training import RESUMABLE_CHANGES

    # mmap: only the config is read here, not the networks and optimizer states (hundreds of MB at 512²)
    config = {k: v for k, v in load_checkpoint(first_ckpt, mmap=True).get("config", {}).items()
              if k not in RESUMABLE_CHANGES}
    run = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return {"run": run, "weights_sha256": weights_sha256, "n_fake": int(p.n_fake), "n_real": int(p.n_real)}


# ------------------------------------------------------------------ per-snapshot metrics
def generated_batches(G, arch: dict, n: int, batch: int = 64, seed0: int = 0,
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

    from tasks.metrics import source_batches

    imgs = next(iter(source_batches(data, batch=n, limit=n))).permute(0, 2, 3, 1).numpy()
    out = [np.asarray(Image.fromarray(im).resize((resolution, resolution), Image.LANCZOS))
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
    from models.trainer import TrainConfig

    state = load_checkpoint(ckpt)
    cfg_dict = dict(state["config"])
    cfg_dict["betas"] = tuple(cfg_dict.get("betas", (0.0, 0.99)))
    cfg = TrainConfig(**cfg_dict)
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


def evaluate_snapshot(snapshot: str | Path, data: str | Path, weights: str | Path, p: EvaluateParams,
                      device: str = "cpu") -> dict:
    """FID (and KID) of one network file against data: a checkpoint, a best.pt or an imported NVIDIA network
    (`ganflow import`), e.g. a pretrained network's distance to a dataset before fine-tuning on it. Writes no
    run files; the real statistics are cached as for evaluate_run."""
    from models.generate import load_generator
    from tasks.metrics import Stats, extract_features, load_extractor, metrics_from, real_stats, sha256_file

    weights_sha = sha256_file(weights)
    G, arch = load_generator(snapshot)
    extractor, digest = load_extractor(weights, p.inception_sha256 or None, device, digest=weights_sha)
    real, cached = real_stats(data, extractor, digest, p.cache_dir or None, n=p.n_real or None,
                              keep_features=p.kid, batch=p.batch, device=device)
    feats = extract_features(extractor, generated_batches(G.to(device), arch, p.n_fake, p.batch), device)
    m = metrics_from(real, Stats.of(feats, keep_features=p.kid), p.kid, p.kid_subsets, p.kid_subset_size)
    return {**m, "snapshot": str(snapshot), "arch": arch["name"], "real_stats_cached": cached,
            "weights_sha256": digest}


def evaluate_run(run_dir: str | Path, data: str | Path, weights: str | Path, p: EvaluateParams,
                 device: str = "cpu", progress: Callable[[dict], None] | None = None) -> dict:
    """Evaluate every snapshot of run_dir that fid.csv has no row for; then flag diverged snapshots, export the
    best one as best.pt and write metrics.json. Returns what metrics.json holds plus `evaluated` (kimgs)."""
    from models.checkpoint import list_checkpoints
    from models.generate import load_generator
    from tasks.metrics import (RANDOM_FILE, RANDOM_NOTE, Stats, extract_features, load_extractor, metrics_from,
                               real_stats, sha256_file)

    run_dir = Path(run_dir)
    snapshots = list_checkpoints(run_dir)
    if not snapshots:
        raise FileNotFoundError(f"{run_dir} has no checkpoints/ckpt-*.pt to evaluate")
    previous = json.loads((run_dir / METRICS_JSON).read_text()) if (run_dir / METRICS_JSON).exists() else {}
    weights_sha = sha256_file(weights)
    key = evaluation_key(snapshots[0][1], weights_sha, p)
    rows = read_fid_csv(run_dir) if previous.get("evaluated_with") == key else []  # else: everything again
    done = {r["kimg"] for r in rows}
    todo = [(k, path) for k, path in snapshots if k not in done]
    evaluated, latest_detail, digest = [], None, None
    if todo:
        extractor, digest = load_extractor(weights, p.inception_sha256 or None, device, digest=weights_sha)
        real, cached = real_stats(data, extractor, digest, p.cache_dir or None, n=p.n_real or None,
                                  keep_features=p.kid, batch=p.batch, device=device)
        for kimg, path in todo:
            G, arch = load_generator(path)
            feats = extract_features(extractor, generated_batches(G.to(device), arch, p.n_fake, p.batch), device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the small-N note is recorded in metrics.json
                m = metrics_from(real, Stats.of(feats, keep_features=p.kid), p.kid, p.kid_subsets, p.kid_subset_size)
            row = {"kimg": kimg, "fid": m["fid"], "kid": m.get("kid_mean"), **discriminator_probe(path, data)}
            rows.append(row)
            write_fid_csv(run_dir, rows)  # after every snapshot: an interrupted evaluation keeps what it did
            evaluated.append(kimg)
            latest_detail = {**m, "kimg": kimg, "real_stats_cached": cached, "weights_sha256": digest}
            if progress:
                progress(dict(latest_detail))
    rows.sort(key=lambda r: r["kimg"])
    flagged = flag_diverged(rows, p.diverge_fid_rises, p.diverge_d_loss)
    best, why = choose_best(rows, flagged)
    if best is not None:
        ckpt = dict(snapshots).get(best["kimg"])  # None when that checkpoint was deleted since
        if ckpt is not None:
            export_best(ckpt, run_dir / BEST, {"fid": best["fid"]})
    latest = rows[-1]
    summary = {
        "kimg": latest["kimg"], "fid": latest["fid"], "kid": latest["kid"],
        **({k: v for k, v in latest_detail.items() if k in ("kid_std", "n_real", "n_fake", "warning",
                                                               "weights_sha256")}
           if latest_detail and latest_detail["kimg"] == latest["kimg"] else
           {k: previous[k] for k in ("kid_std", "n_real", "n_fake", "warning", "weights_sha256") if k in previous}),
        "best": {"kimg": best["kimg"], "fid": best["fid"], "why": why, "file": BEST} if best else None,
        "flagged": {f"{k:g}": r for k, r in flagged.items()},
        "snapshots": len(rows),
        "evaluated_with": key,
        **({"extractor": RANDOM_NOTE} if Path(weights).name == RANDOM_FILE else {}),
    }
    tmp = run_dir / f".{METRICS_JSON}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, run_dir / METRICS_JSON)
    return {**summary, "evaluated": evaluated}


# ------------------------------------------------------------------ what the UI shows
def fid_table_rows(rows: list[dict], flagged: dict, best_kimg: float | None) -> list[dict]:
    """The FID-over-kimg table for a Prefect table artifact."""
    return [{"kimg": f"{r['kimg']:g}", "FID": f"{r['fid']:.4f}" if r.get("fid") is not None else "–",
             "KID": f"{r['kid']:.5f}" if r.get("kid") is not None else "–",
             "note": row_note(r["kimg"], best_kimg, flagged)}
            for r in sorted(rows, key=lambda r: r["kimg"])]


def weights_or_reason(cli: str | None, configured: str | None) -> tuple[Path | None, str]:
    """The weights path, or None and why (for callers that skip evaluation rather than fail)."""
    from tasks.metrics import InceptionWeightsError, resolve_weights

    try:
        return resolve_weights(cli, configured), ""
    except InceptionWeightsError as e:
        return None, str(e)


# ------------------------------------------------------------------ Prefect

@task(name="evaluate-snapshots", cache_policy=NO_CACHE)  # results live in RUN/fid.csv
def evaluate_task(run_dir: str, data: str, weights: str, p: EvaluateParams, device: str = "cpu") -> dict:
    """FID/KID for every snapshot of run_dir not evaluated yet; best.pt and metrics.json; artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.train_report import artifact_key, thumbnail_data_uri

    logger = get_run_logger()

    def progress(m: dict) -> None:
        logger.info("%g kimg: FID %.4f%s (N real %d, fake %d)", m["kimg"], m["fid"],
                    f", KID {m['kid_mean']:.5f}" if "kid_mean" in m else "", m["n_real"], m["n_fake"])

    out = evaluate_run(run_dir, data, weights, p, device=device, progress=progress)
    if out.get("warning"):
        logger.warning(out["warning"])
    rows = read_fid_csv(run_dir)
    flagged = {float(k): v for k, v in out["flagged"].items()}
    best = out.get("best") or {}
    key = artifact_key(run_dir).replace("train-", "fid-", 1)
    create_table_artifact(key=key, table=fid_table_rows(rows, flagged, best.get("kimg")),
                          description=f"FID over kimg for {run_dir} (best: {best.get('kimg', '–')} kimg)")
    samples = sorted((Path(run_dir) / "samples").glob("fakes-*.png"))
    lines = [f"### Evaluation of {run_dir}", "",
             f"Best snapshot: {best.get('kimg', '–')} kimg, FID {best.get('fid', float('nan')):.4f} "
             f"({best.get('why', '')}) → `{Path(run_dir) / BEST}`" if best else "No best snapshot."]
    if flagged:
        lines += ["", "Flagged as diverged: " + ", ".join(f"{k:g} kimg" for k in sorted(flagged))]
    if out.get("warning"):
        lines += ["", f"Note: {out['warning']}"]
    if samples:
        lines += ["", f"![newest samples]({thumbnail_data_uri(samples[-1])})"]
    create_markdown_artifact(key=key + "-summary", markdown="\n".join(lines) + "\n")
    return out
