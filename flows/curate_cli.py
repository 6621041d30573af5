"""`ganflow ingest` and `ganflow curate`: sources into a raw store, and a raw store into a curated dataset, with a
progress bar per stage on the terminal."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from flows.cli.options import add_params_option, add_setting_options, given_settings
from tasks.common.settings import CurateSettings, IngestSettings, IngestSource


class _Bars:
    """A tqdm bar per pipeline stage, fed by tasks.common.progress from the flow's tasks."""

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def begin(self, stage: str, total: int) -> None:
        self.bars[stage] = tqdm(total=total or None, desc=f"{stage:>7}", unit="img", leave=True,
                                dynamic_ncols=True, file=sys.stderr)

    def advance(self, stage: str, n: int = 1) -> None:
        if stage in self.bars:
            self.bars[stage].update(n)

    def end(self, stage: str) -> None:
        bar = self.bars.pop(stage, None)
        if bar is not None:
            bar.close()


CURATE_METAVARS = {"resolution": "N", "batch_size": "N", "workers": "N", "dask_address": "ADDRESS",
                   "dask_batch_size": "N", "rembg_model": "NAME", "shard_size": "N", "max_member_bytes": "BYTES"}


def _add_curate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("curate", help="build a clean square dataset from a folder, an archive, a hashtag or the demo",
                       description="Ingest images, filter them (corrupt, too small, blurry, grayscale, text, faces, "
                                   "duplicates), crop to square, matte onto white, and write DIR/manifest.jsonl, "
                                   "DIR/shards/*.tar and DIR/dataset.json.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", metavar="PATH", help="a folder (recursive), a .zip or a .tar of images")
    src.add_argument("--hashtag", metavar="TAG", help="an Instagram hashtag (needs a session file; see --session-file)")
    src.add_argument("--demo", action="store_true", help="the embedded demo data (built offline at run time)")
    src.add_argument("--raw", metavar="DIR", help="a raw store `ganflow ingest` filled (skips ingest)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the curated dataset")
    add_params_option(p)
    p.add_argument("--raw-root", default="data/raw", metavar="DIR", help="raw store root (default: data/raw)")
    p.add_argument("--cache-dir", default="data/cache", metavar="DIR", help="per-image result cache (default: data/cache)")
    add_setting_options(p, IngestSettings, ["max_posts"], metavars={"max_posts": "N"})  # --max-posts
    p.add_argument("--dvc", action="store_true", help="version the result with DVC: dvc add (or commit), dvc push, "
                                                      "and a git commit of its .dvc file (see `ganflow datasets`)")
    p.add_argument("--session-file", metavar="FILE",
                   help="Instagram session file from `instaloader --login USER` (or $GANFLOW_IG_SESSIONFILE)")
    p.add_argument("--ig-user", metavar="USER", help="Instagram user of that session (or $GANFLOW_IG_USER)")
    # One option per setting of params.yaml's `curate` section, from tasks.common.settings.CurateSettings; --dask is
    # the name users know for --dask-address. The raw store and the cache must be at the same path on every worker.
    add_setting_options(p, CurateSettings, aliases={"dask_address": ["--dask"]}, metavars=CURATE_METAVARS)
    p.set_defaults(func=_run_curate)


def _check_curate_args(args: argparse.Namespace) -> None:
    """Every curate option checked before Prefect starts: a bad one is one line naming it (exit 2)."""
    from tasks.ingestion.ingest import hashtag_settings
    from tasks.common.outdir import check_dataset_dir, check_store_root, is_raw_store
    from tasks.common.settings import load
    from tasks.ingestion.sources.local import check_input

    params = load(CurateSettings, args.params, **given_settings(args, CurateSettings))
    if params.dask_address:  # a scheduler that does not answer: one line after seconds, before Prefect starts
        from tasks.curation.cluster import probe_scheduler

        probe_scheduler(params.dask_address)
    if args.hashtag is not None:  # a scrape reads params.yaml's ingest.max_posts unless --max-posts names one
        hashtag_settings(args.params, args.hashtag, {"max_posts": args.max_posts})
    check_dataset_dir(args.out, "--out")
    check_store_root(args.cache_dir, "--cache-dir")
    if args.raw is None:
        check_store_root(args.raw_root, "--raw-root")
    elif not (Path(args.raw) / "provenance.jsonl").is_file() or not is_raw_store(Path(args.raw)):
        raise ValueError(f"--raw {args.raw!r} is not a raw store (no provenance.jsonl): run `ganflow ingest` first")
    if args.input is not None:
        check_input(args.input)


def _run_curate(args: argparse.Namespace) -> int:
    from flows.curate import curate
    from tasks.common import progress
    from tasks.curation.report import summary_text
    from tasks.curation.publish import read_manifest
    from tasks.curation.result import CurationResult

    _check_curate_args(args)
    source: IngestSource = "hashtag" if args.hashtag else "path" if args.input else "demo"
    progress.install(_Bars())
    try:
        result = CurationResult.from_dict(curate(
            source=source, input_path=args.input, hashtag=args.hashtag, out=args.out, raw_root=args.raw_root,
            cache_dir=args.cache_dir, params_path=args.params, settings=given_settings(args, CurateSettings),
            ingest_settings={"max_posts": args.max_posts}, session_file=args.session_file, ig_user=args.ig_user,
            raw_dir=args.raw, version=args.dvc))
    finally:
        progress.install(None)
    print()
    print(result.matte_note)
    print(summary_text(read_manifest(args.out)))
    print(f"\n{result.count} of {result.inputs} images accepted at {result.resolution}² "
          f"(content hash {result.content_hash[:12]}).")
    print(f"Results in {result.out}/: manifest.jsonl, dataset.json, shards/ ({len(result.shards)} tar)")
    if result.version is not None:
        v = result.version
        print(f"Versioned with DVC: {v['md5']} (git {str(v.get('git_rev') or '-')[:10]}, "
              f"{'pushed' if v.get('pushed') else 'not pushed'})")
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="copy a source's images into a raw store (the DVC pipeline's first stage)",
                       description="Copy a folder, an archive, a hashtag's posts or the demo into DIR (files by "
                                   "content hash + provenance.jsonl). With no source option, params.yaml's "
                                   "`ingest` section names the source. `ganflow curate --raw DIR` curates it.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="PATH", help="a folder (recursive), a .zip or a .tar of images")
    src.add_argument("--hashtag", metavar="TAG", help="an Instagram hashtag (needs a session file)")
    src.add_argument("--demo", action="store_true", help="the embedded demo data")
    p.add_argument("--raw-dir", required=True, metavar="DIR", help="the raw store to fill")
    add_params_option(p)
    add_setting_options(p, IngestSettings, ["max_posts"], metavars={"max_posts": "N"})  # --max-posts
    p.add_argument("--session-file", metavar="FILE", help="Instagram session file (or $GANFLOW_IG_SESSIONFILE)")
    p.add_argument("--ig-user", metavar="USER", help="Instagram user of that session (or $GANFLOW_IG_USER)")
    p.set_defaults(func=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    from tasks.common import progress
    from tasks.ingestion.ingest import ingest_source
    from tasks.common.outdir import check_raw_dir
    from tasks.common.settings import CurateSettings, IngestSettings, load
    from tasks.ingestion.sources.local import MemberLimits, check_input
    from tasks.ingestion.sources.raw import read_provenance

    named: dict[str, Any] = {}  # a source option given here replaces the params' source
    if args.demo or args.input or args.hashtag:
        named = {"source": "hashtag" if args.hashtag else "path" if args.input else "demo",
                 "input": args.input or "", "hashtag": args.hashtag or ""}
    p = load(IngestSettings, args.params, **named, max_posts=args.max_posts)
    limits = MemberLimits.from_params(load(CurateSettings, args.params))  # the member caps live with the filters
    raw_dir = check_raw_dir(args.raw_dir, "--raw-dir")
    if p.source == "path":
        check_input(p.input)
    progress.install(_Bars())
    progress.begin("ingest", 0)
    try:
        raw = ingest_source(p.source, raw_dir, limits, p.input, p.hashtag, p.max_posts, args.session_file,
                            args.ig_user)
    finally:
        progress.end("ingest")
        progress.install(None)
    items = read_provenance(raw)
    print(f"{len(items)} inputs ({len({i.id for i in items})} distinct files) from {p.source} in {raw}")
    return 0



def add_curation_commands(sub: argparse._SubParsersAction) -> None:
    _add_ingest(sub)
    _add_curate(sub)
