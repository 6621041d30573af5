"""Rendering accepted images: square crop, matte onto white, Lanczos resize, PNG; cached per image."""
from __future__ import annotations

from functools import partial

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import progress
from tasks.curation import registry
from tasks.curation.cache import StageCache
from tasks.common.settings import CurateSettings
from tasks.curation.per_image import render_one
from tasks.curation.cluster import BatchResult, batch_folders, require_folders
from tasks.curation.pool import imap, on_dask_worker

RENDER_VERSION = "2"  # bump when rendering changes its output (2: decoded at >= resolution, not full size)


def render_cache(params: CurateSettings, cache_dir: str, matte_name: str) -> StageCache:
    # The resolved matte (auto → rembg or grabcut) is part of the key: adding a model file re-renders.
    # The face filter's settings (as registered) decide the crop box in face_mode=crop.
    digest = params.digest("resolution", "rembg_model", *registry.filter_keys("face")) + "-" + matte_name
    if matte_name == "grabcut" and params.matte_mask != "full":
        digest += "-" + params.matte_mask  # only GrabCut reads it; the full mask keeps the key renders had before it
    return StageCache(cache_dir, "render", f"{RENDER_VERSION}-{digest}", suffix=".png")


def render(jobs: list[tuple[str, str, dict | None]], params: CurateSettings, cache_dir: str,
           matte_name: str) -> dict[str, str]:
    """jobs: (id, path, face_box); returns id → cached PNG path."""
    cache = render_cache(params, cache_dir, matte_name)
    todo = [j for j in jobs if not cache.has(j[0])]
    progress.advance("render", len(jobs) - len(todo))
    fn = partial(render_one, params=params)
    for (image_id, _, _), (png, _info) in zip(todo, imap(fn, [(p, f) for _, p, f in todo], params.workers)):
        cache.put_bytes(image_id, png)
        progress.advance("render")
    return {image_id: str(cache.path(image_id)) for image_id, _, _ in jobs}


@task(name="render", task_run_name="render-{batch_no}", cache_policy=NO_CACHE)
def render_task(jobs: list[tuple[str, str, dict | None]], params: CurateSettings, cache_dir: str,
                matte_name: str, batch_no: int = 0) -> BatchResult:
    if on_dask_worker():
        require_folders(batch_folders((p for _, p, _ in jobs), cache_dir))
    return BatchResult(render(jobs, params, cache_dir, matte_name))
