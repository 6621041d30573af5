"""Screening: decode plus cheap checks (size, blur, grayscale, hash), then content checks (faces, text).

Pure functions over (id, path) batches, cached per image so a rerun does no work twice, plus thin
Prefect tasks that the curate flow maps over batches.
"""
from __future__ import annotations

import sys
from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import progress
from tasks.curation.cache import StageCache
from tasks.curation.registry import STAGE_KEYS, stage_keys
from tasks.common.settings import CurateSettings
from tasks.curation.per_image import redecide_cheap, screen_cheap_one, screen_content_one
from tasks.curation.cluster import BatchResult, batch_folders, require_folders
from tasks.curation.pool import imap, on_dask_worker

SCREEN_VERSION = "4"  # bump when the scoring code changes meaning (3: header-first sizes; error details name files, not paths; 4: text detection at DETECT_SIDE, not upscaled)


def cache_key(kind: str, params: CurateSettings) -> str:
    """What a stage's cached results are filed under, with the scoring code's version.

    cheap: the measurements on the blur_size thumbnail, which depend on STAGE_KEYS only; the cheap filters judge
    those scores and are re-run on every read (redecide_cheap), so a changed threshold decodes nothing.
    content: the content filters measure as they judge, so every setting they read (registry.stage_keys)."""
    keys = STAGE_KEYS["cheap"] if kind == "cheap" else stage_keys(kind)
    return SCREEN_VERSION + "-" + params.digest(*keys)


def shared_strings(value):
    """`value` with its dict keys and short words (formats, modes, reasons) interned. A JSON or pickle round trip
    makes new copies of them for every image; the flow holds every image's result until the manifest is written,
    and one shared copy halves that (1241 -> 579 bytes per cheap result)."""
    if isinstance(value, dict):
        return {sys.intern(k): shared_strings(v) for k, v in value.items()}
    if isinstance(value, str) and len(value) <= 16:
        return sys.intern(value)
    return value


def _run_cached(kind: str, fn, items: list[tuple[str, str]], params: CurateSettings,
                cache_dir: str, decide=None, help_start: bool = False) -> dict[str, dict]:
    """fn's result per item, from the cache where it holds one (through decide(cached, params), when given: None
    there means measure again); results keep only their reason and scores. help_start: see pool.imap."""
    cache = StageCache(cache_dir, kind, cache_key(kind, params))
    results: dict[str, dict] = {}
    todo = []
    for image_id, path in items:
        hit = cache.get_json(image_id)
        if hit is not None and decide is not None:
            hit = decide(hit, params)
        if hit is None:
            todo.append((image_id, path))
        else:
            results[image_id] = shared_strings(hit)
    progress.advance(kind, len(items) - len(todo))
    for (image_id, _), result in zip(todo, imap(partial(fn, params=params), [p for _, p in todo], params.workers,
                                                  help_start)):
        cache.put_json(image_id, result)
        result.pop("header", None)  # cached for redecide_cheap, not part of the verdict
        results[image_id] = shared_strings(result)
        progress.advance(kind)
    return results


def screen_cheap(items: list[tuple[str, str]], params: CurateSettings, cache_dir: str) -> dict[str, dict]:
    return _run_cached("cheap", screen_cheap_one, items, params, cache_dir, decide=redecide_cheap, help_start=True)


def screen_content(items: list[tuple[str, str]], params: CurateSettings, cache_dir: str) -> dict[str, dict]:
    return _run_cached("content", screen_content_one, items, params, cache_dir)


def _on_worker(items: list[tuple[str, str]], cache_dir: str) -> None:
    """On a Dask worker (one may join after the flow's preflight), check that this batch's folders and the cache
    are mounted there: one clear error, never images marked unreadable for a missing mount."""
    if on_dask_worker():
        require_folders(batch_folders((p for _, p in items), cache_dir))


@task(name="screen-cheap", task_run_name="screen-cheap-{batch_no}", cache_policy=NO_CACHE)
def screen_cheap_task(items: list[tuple[str, str]], params: CurateSettings, cache_dir: str,
                      batch_no: int = 0) -> BatchResult:
    _on_worker(items, cache_dir)
    return BatchResult(screen_cheap(items, params, cache_dir))


@task(name="screen-content", task_run_name="screen-content-{batch_no}", cache_policy=NO_CACHE)
def screen_content_task(items: list[tuple[str, str]], params: CurateSettings, cache_dir: str,
                        batch_no: int = 0) -> BatchResult:
    _on_worker(items, cache_dir)
    return BatchResult(screen_content(items, params, cache_dir))
