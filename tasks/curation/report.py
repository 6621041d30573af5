"""What the user sees: a reason table and a contact sheet, as Prefect artifacts and as CLI text."""
from __future__ import annotations

import base64
import io
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from PIL import Image

from tasks.curation.decode import DecodeError, decode
from tasks.curation.publish import Record, reason_counts

THUMB = 96


def summary_rows(records: list[Record]) -> list[dict]:
    total = len(records) or 1
    return [{"reason": k, "count": v, "share": f"{100 * v / total:.1f}%"}
            for k, v in reason_counts(records).items()]


def summary_text(records: list[Record]) -> str:
    rows = summary_rows(records)
    width = max([len(r["reason"]) for r in rows] + [6])
    lines = [f"{'reason':<{width}}  {'count':>6}  share", f"{'-' * width}  {'-' * 6}  -----"]
    lines += [f"{r['reason']:<{width}}  {r['count']:>6}  {r['share']:>5}" for r in rows]
    lines.append(f"{'total':<{width}}  {len(records):>6}")
    return "\n".join(lines)


def _thumb_uri(path: str | Path) -> str | None:
    try:
        img = Image.fromarray(decode(path, min_side=THUMB).rgb)
    except DecodeError:
        return None
    img.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def contact_sheet(records: list[Record], paths: dict[str, str], per_reason: int = 4) -> str:
    """Markdown with a few small samples per reason (accepted ones as rendered), inline as data URIs."""
    lines = ["# Curation contact sheet", ""]
    for reason in reason_counts(records):
        picked = [r for r in records if (r.reason or "accepted") == reason][:per_reason]
        cells = []
        for r in picked:
            uri = _thumb_uri(paths[r.id]) if r.id in paths else None
            label = r.source_name.replace("|", "/")
            cells.append(f"![{label}]({uri}) `{label}`" if uri else f"`{label}` (no preview)")
        lines += [f"## {reason} ({sum(1 for x in records if (x.reason or 'accepted') == reason)})", "",
                  " ".join(cells), ""]
    return "\n".join(lines)


@task(name="report", cache_policy=NO_CACHE)
def report_task(records: list[Record], paths: dict[str, str], dataset: dict) -> None:
    create_table_artifact(key="curation-reasons", table=summary_rows(records),
                          description=f"Curation: {dataset['count']} accepted of {dataset['inputs']} inputs "
                                      f"(content hash {dataset['content_hash'][:12]})")
    create_markdown_artifact(key="curation-contact-sheet", markdown=contact_sheet(records, paths),
                             description="Samples per reason, accepted ones as rendered")
