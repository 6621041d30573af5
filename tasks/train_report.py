"""What a training run shows in the Prefect UI: a progress artifact (kimg done / target) and, after each
stage, a markdown artifact with the stage's losses, ADA p, speed and its newest sample grid.

The text is built by pure functions; the artifact calls are thin. The progress artifact's description is
also what the training manager shows as a run's progress (tasks.runs reads it back).
"""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from uuid import UUID

THUMB_SIDE = 384  # embedded sample grids are downscaled to this (artifacts live in the server's database)


def percent(kimg: float, total_kimg: float) -> float:
    return max(0.0, min(100.0, 100.0 * kimg / total_kimg)) if total_kimg > 0 else 0.0


def progress_text(kimg: float, total_kimg: float, stage_label: str = "", stats: dict | None = None) -> str:
    """e.g. 'kimg 12.3 / 25000 · stage 1/5 (cycle 1/5) · 1.52 kimg/s · ADA p 0.041'"""
    parts = [f"kimg {kimg:g} / {total_kimg:g}"]
    if stage_label:
        parts.append(stage_label)
    stats = stats or {}
    if stats.get("kimg_per_s"):
        parts.append(f"{stats['kimg_per_s']:.3g} kimg/s")
    if stats.get("augment_p"):
        parts.append(f"ADA p {stats['augment_p']:.3f}")
    if "stage_resolution" in stats:
        parts.append(f"growing at {stats['stage_resolution']}² alpha {stats['alpha']:.2f}")
    return " · ".join(parts)


def artifact_key(run_dir: str | Path) -> str:
    """A stable key per run folder (lowercase letters, digits, dashes), so the UI lists a run's stage
    reports as versions of one artifact across attempts."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(run_dir).resolve().name.lower()).strip("-") or "run"
    return f"train-{slug}"[:60]


def _fmt(value, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def thumbnail_data_uri(png: str | Path, side: int = THUMB_SIDE) -> str:
    from PIL import Image

    with Image.open(png) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side))
        buf = io.BytesIO()
        im.save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def stage_markdown(stage_label: str, summary: dict, total_kimg: float, embed: bool = True) -> str:
    """The stage report: a table of where training is and the newest sample grid."""
    rows = [("kimg", f"{summary['kimg']:g} / {total_kimg:g} (stage ends at {summary['end_kimg']:g})"),
            ("loss D", _fmt(summary.get("loss_D"))), ("loss G", _fmt(summary.get("loss_G"))),
            ("ADA p", _fmt(summary.get("augment_p"), ".3f")), ("kimg/s", _fmt(summary.get("kimg_per_s"), ".3g")),
            ("stage time", f"{summary['seconds']:.1f} s"),
            ("resumed from", f"`{summary['resumed_from']}`" if summary.get("resumed_from") else "– (new run)"),
            ("checkpoint", f"`{summary['checkpoint']}`" if summary.get("checkpoint") else "–"),
            ("sample grid", f"`{summary['samples']}`" if summary.get("samples") else "–")]
    lines = [f"### Training {stage_label}", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]
    if embed and summary.get("samples") and Path(summary["samples"]).is_file():
        lines += ["", f"![samples at {summary['kimg']:g} kimg]({thumbnail_data_uri(summary['samples'])})"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- Prefect

def create_progress(kimg: float, total_kimg: float, text: str = "") -> UUID:
    from prefect.artifacts import create_progress_artifact

    return create_progress_artifact(progress=percent(kimg, total_kimg),
                                    description=text or progress_text(kimg, total_kimg))


def update_progress(artifact_id: UUID | str, kimg: float, total_kimg: float, text: str) -> None:
    from prefect.artifacts import update_progress_artifact

    update_progress_artifact(UUID(str(artifact_id)), progress=percent(kimg, total_kimg), description=text)


def publish_stage(run_dir: str | Path, stage_label: str, summary: dict, total_kimg: float) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(stage_markdown(stage_label, summary, total_kimg), key=artifact_key(run_dir),
                             description=f"{stage_label}: {summary['kimg']:g} / {total_kimg:g} kimg")
