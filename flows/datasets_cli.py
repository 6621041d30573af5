"""`ganflow datasets`: the dataset versions git and DVC hold (git rev, DVC hash, counts per reason)."""
from __future__ import annotations

import argparse
import json


def add_datasets_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("datasets", help="list dataset versions: git rev, DVC hash, counts per reason",
                       description="One row per git commit that changed a dataset's DVC tracking (a .dvc file "
                                   "under data/, or a dvc.lock stage out holding a dataset.json), oldest first. "
                                   "Each version's dataset.json is read from the local DVC cache, else the "
                                   "default remote; '?' where neither has it (`dvc fetch` brings it).")
    p.add_argument("dataset", nargs="?", metavar="PATH", help="only this dataset folder, e.g. data/curated/pipeline")
    p.add_argument("--repo", default=".", metavar="DIR", help="the project (a git + DVC repo; default: .)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (for scripts)")
    p.set_defaults(func=_run_datasets)


def _counts(row: dict) -> str:
    return "?" if row["count"] is None else f"{row['count']}/{row['inputs']}"


def _reasons(row: dict) -> str:
    if row["reasons"] is None:
        return "?"
    reasons = sorted(((k, v) for k, v in row["reasons"].items() if k != "accepted"), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{k}={v}" for k, v in reasons)


def versions_table(rows: list[dict]) -> str:
    from tasks.versioning.history import format_date

    header = ("rev", "date", "dataset", "dvc hash", "accepted", "rejected by reason")
    cells = [(r["rev"][:8], format_date(r["date"]), r["dataset"], r["md5"].removesuffix(".dir")[:12],
              _counts(r), _reasons(r)) for r in rows]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(str(c[i]).ljust(w) for i, w in enumerate(widths)), c[-1]]).rstrip()
                     for c in [header, *cells])


def _run_datasets(args: argparse.Namespace) -> int:
    from tasks.versioning.history import dataset_versions

    rows = dataset_versions(args.repo, args.dataset)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(versions_table(rows))
    else:
        print("No dataset versions in git yet: `dvc add` a curated folder (or run the curate flow with "
              "versioning) and commit its .dvc file.")
    return 0
