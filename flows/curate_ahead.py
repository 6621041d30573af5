"""Curation work done while the ephemeral Prefect server starts, for `ganflow curate` (issue 29).

With no PREFECT_API_URL, the first flow of a process starts a temporary server and waits for it, about 19 s on
2 cores, before its first task. The CLI starts that server in a thread instead and, meanwhile, runs the pure
pipeline the flow would run (ingest, cheap checks, near-duplicates, faces/text, rendering) into the per-image cache,
a few images at a time, stopping as soon as the server answers. The flow then runs as always, every task recorded
in Prefect, and finds that work in the cache as a rerun would: the same cache keys, so the same bytes.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from tasks.common.outdir import check_raw_dir, check_store_root
from tasks.common.settings import CurateSettings
from tasks.curation import pool
from tasks.curation.dedup import near_duplicates
from tasks.curation.matte import make_matter
from tasks.curation.render import render
from tasks.curation.screen import screen_cheap, screen_content
from tasks.curation.verdicts import dedup_candidates, split_exact_copies
from tasks.ingestion.ingest import ingest_source, raw_name
from tasks.ingestion.sources.local import MemberLimits
from tasks.ingestion.sources.raw import PROVENANCE, read_provenance


def server_starting() -> threading.Thread | None:
    """Start the ephemeral Prefect server in a thread when flows will use one (no PREFECT_API_URL), else None.

    Join the thread before the flow runs: a flow that finds the server half started would not wait for it. A start
    that fails here is retried, and its error raised, by the flow's own start."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer

    def start() -> None:
        try:
            SubprocessASGIServer().start()
        except Exception:  # noqa: BLE001  (the flow starts it again and reports why)
            pass

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()
    return thread


def work_ahead(params: CurateSettings, cache_dir: str, busy: Callable[[], bool], source: str = "path",
               input_path: str | None = None, raw_root: str = "data/raw", raw_dir: str | None = None) -> int:
    """While busy(), do the curate flow's per-image work into cache_dir; returns the images rendered (0 when
    stopped before the last render).

    Only what a later flow run repeats exactly: no hashtag scrape (Instagram is the flow's, with its retries) and
    nothing on a Dask cluster. Any error is left for the flow, which meets it again and records it.
    """
    if source == "hashtag" or params.dask_address:
        return 0
    try:
        return _ahead(params, cache_dir, busy, source, input_path, raw_root, raw_dir)
    except Exception:  # noqa: BLE001  (the flow's run reports it)
        return 0


def _ahead(params: CurateSettings, cache_dir: str, busy: Callable[[], bool], source: str, input_path: str | None,
           raw_root: str, raw_dir: str | None) -> int:
    pool.warm(params.workers)
    cache_dir = str(check_store_root(cache_dir, "cache_dir"))
    if raw_dir is None:  # the flow's _ingest: the same store, and ingesting twice stores nothing twice
        store = check_store_root(raw_root, "raw_root") / raw_name(source, input_path)
        raw_dir = str(check_raw_dir(str(store), "raw_root"))
        ingest_source(source, raw_dir, MemberLimits.from_params(params), input_path)
    elif not (Path(raw_dir) / PROVENANCE).is_file():
        return 0
    unique, _ = split_exact_copies(read_provenance(Path(raw_dir)))
    items = [(i.id, str(Path(raw_dir) / i.file)) for i in unique]
    step = 2 * pool.resolve_workers(params.workers)  # small steps: the flow waits at most for one of them

    def each(stage, todo: list, **kwargs) -> dict | None:
        done: dict = {}
        for k in range(0, len(todo), step):
            if not busy():
                return None
            done.update(stage(todo[k:k + step], params=params, cache_dir=cache_dir, **kwargs))
        return done

    cheap = each(screen_cheap, items)
    if cheap is None:
        return 0
    near = near_duplicates(dedup_candidates(cheap), params.dup_max_distance)
    survivors = [(i, p) for i, p in items if cheap[i]["reason"] is None and i not in near]
    content = each(screen_content, survivors)
    if content is None:
        return 0
    jobs = [(i, p, content[i]["face_box"]) for i, p in survivors if content[i]["reason"] is None]
    matter = make_matter(params.matte, params.rembg_model, params.matte_mask)
    pngs = each(render, jobs, matte_name=matter.name)
    return len(pngs or {})
