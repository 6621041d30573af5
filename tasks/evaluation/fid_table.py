"""RUN/fid.csv, the FID-over-kimg table `ganflow evaluate` writes (and DVC plots), and the note each row gets.

No Prefect and no torch here: the web page (tasks/serving/app.py) and the CLI read it too.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from models.run_dir import RunDir
from tasks.evaluation.registry import csv_fields

# fid.csv's columns after kimg are the registered metrics' (tasks.evaluation.registry), in registry order.


def read_fid_csv(run_dir: str | Path) -> list[dict]:
    path = RunDir(run_dir).fid_csv
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return parse_fid_csv(f.read())


def parse_fid_csv(text: str) -> list[dict]:
    """fid.csv's rows as {field: float | None}; an empty cell is None, a cell that is not a number a ValueError."""
    fields = csv_fields()
    return [{k: float(r[k]) if r.get(k) else None for k in fields} for r in csv.DictReader(io.StringIO(text))]


def write_fid_csv(run_dir: str | Path, rows: list[dict]) -> Path:
    path = RunDir(run_dir).fid_csv
    tmp = path.with_name(f".{path.name}.tmp")
    fields = csv_fields()
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["kimg"]):
            # repr: full precision, so a number read back equals the one computed
            w.writerow({k: "" if r.get(k) is None else repr(float(r[k])) for k in fields})
    os.replace(tmp, path)
    return path


def row_note(kimg: float, best_kimg: float | None, flagged, memorizing=()) -> str:
    """What a table shows beside a snapshot: best, diverged (flagged: kimgs the divergence monitor marked),
    memorizing (over evaluate.max_memorized), or ''."""
    return ("best" if kimg == best_kimg else "diverged" if kimg in flagged else
            "memorizing" if kimg in memorizing else "")
