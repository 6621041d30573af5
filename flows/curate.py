"""The curate flow: source → screen (decode, size, blur, gray) → dedup → screen (faces, text) → render → publish.

Tasks run over batches of images (never one task per image), through a bounded window of futures, and pass
paths and hashes only. With a Dask scheduler address (curate.dask_address; --dask; the settings parameter's
dask_address) the batch tasks run on that cluster; everything else (ingest, dedup, publish) stays in the flow's process.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger

from tasks.curation import pool
from tasks import progress
from tasks.curation.cluster import Batches, dask_batches, local_batches
from tasks.curation.dedup import dedup_task
from tasks.ingestion.ingest import ingest_task, raw_name, scrape_hashtag_task
from tasks.curation.matte import make_matter
from tasks.outdir import check_dataset_dir, check_raw_dir, check_store_root
from tasks.settings import CurateOverrides, CurateSettings, given, load
from tasks.curation.publish import publish_task
from tasks.curation.render import render_task
from tasks.curation.report import report_task, summary_text
from tasks.curation.screen import screen_cheap_task, screen_content_task
from tasks.ingestion.sources.local import MemberLimits
from tasks.ingestion.sources.raw import PROVENANCE, read_provenance
from tasks.versioning.record import version_dataset_task
from tasks.curation.verdicts import assemble, dedup_candidates, split_exact_copies


def _batches(items: list, size: int):
    return (items[k:k + size] for k in range(0, len(items), size))


def _mapped(batches: Batches, task, items: list, size: int, stage: str, **kwargs) -> dict:
    """Run `task` over batches of items and merge the per-batch dicts (in batch order)."""
    progress.begin(stage, len(items))
    merged: dict = {}
    batches.run(task, _batches(items, size), stage, merged.update, **kwargs)
    progress.end(stage)
    return merged


@flow(name="curate", log_prints=True)
def curate(
    source: Literal["demo", "path", "hashtag"] = "demo",  # demo data, a folder/zip/tar, or an Instagram hashtag
    input_path: str | None = None,        # folder (recursive), .zip or .tar when source="path"
    hashtag: str | None = None,           # hashtag without '#' when source="hashtag"
    out: str = "data/curated/demo",       # where manifest.jsonl, shards/ and dataset.json go
    raw_root: str = "data/raw",           # raw store root: data/raw/<name>/
    cache_dir: str = "data/cache",        # per-image results, so reruns do no work twice
    params_path: str = "params.yaml",     # thresholds and settings (section `curate`)
    settings: CurateOverrides = CurateOverrides(),  # type: ignore[valid-type]  # a model made from CurateSettings
    max_posts: int = 200,                 # Instagram: posts to take from the hashtag
    session_file: str | None = None,      # Instagram session file (else $GANFLOW_IG_SESSIONFILE)
    ig_user: str | None = None,           # Instagram user of that session (else $GANFLOW_IG_USER)
    raw_dir: str | None = None,           # an already ingested raw store (`ganflow ingest`): ingest is skipped
    version: bool = False,                # version the dataset with DVC (add or commit, push, git commit)
) -> dict:
    """Curate a folder, an archive, a hashtag or the demo into a clean square dataset.

    Args:
        source: demo (built offline), path (a folder, .zip or .tar) or hashtag (Instagram).
        input_path: The folder (recursive), .zip or .tar when source is path.
        hashtag: The hashtag without '#' when source is hashtag.
        out: Where manifest.jsonl, shards/ and dataset.json go.
        raw_root: Raw store root: inputs are copied once to a folder named after the source below it
            (RAW_ROOT/NAME/, e.g. data/raw/demo/).
        cache_dir: Per-image results, so reruns do no work twice.
        params_path: Thresholds and settings (section curate).
        settings: Curation settings for this run, each with its bounds; an empty one keeps params.yaml's value
            (section curate). dask_address: a Dask scheduler (tcp://host:8786) whose workers run the batch tasks
            (screening, rendering); the raw store and the cache must then be at the same path on every worker.
        max_posts: Instagram: posts to take from the hashtag.
        session_file: Instagram session file on the worker. Empty: $GANFLOW_IG_SESSIONFILE.
        ig_user: Instagram user of that session. Empty: $GANFLOW_IG_USER.
        raw_dir: A raw store that `ganflow ingest` already filled (the DVC pipeline's ingest stage): curate its
            files and skip ingest; source, input_path and hashtag are then not used.
        version: Version the dataset with DVC when it is written: `dvc add` (or `dvc commit` when a dvc.yaml stage
            makes it), `dvc push` to the default remote, and a git commit of its .dvc file; one writer at a time.
            Its DVC hash is recorded as an artifact and listed by `ganflow datasets`. Never inside `dvc repro`.
    """
    params = load(CurateSettings, params_path, **given(settings))
    # Never write into a folder ganflow did not write (the CLI checks these too, before Prefect starts).
    out = str(check_dataset_dir(out, "out"))
    cache_dir = str(check_store_root(cache_dir, "cache_dir"))
    on_dask = bool(params.dask_address)
    if not on_dask:
        pool.warm(params.workers)  # worker processes start while ingest runs
    if raw_dir is None:
        store = check_store_root(raw_root, "raw_root") / raw_name(source, input_path, hashtag)
        raw_dir = str(check_raw_dir(str(store), "raw_root"))
        progress.begin("ingest", 0)
        if source == "hashtag":
            # mypy: the CLI requires it for this source
            scrape_hashtag_task(hashtag, raw_dir, max_posts, session_file, ig_user)  # type: ignore[arg-type]
        else:
            ingest_task(source, raw_dir, MemberLimits.from_params(params), input_path)
        progress.end("ingest")
    elif not (Path(raw_dir) / PROVENANCE).is_file():
        raise FileNotFoundError(f"{raw_dir} is not a raw store (no {PROVENANCE}): run `ganflow ingest` first")
    inputs = read_provenance(Path(raw_dir))

    unique, _ = split_exact_copies(inputs)
    store = Path(raw_dir)
    if on_dask:  # workers on other machines see the same absolute paths, never this process's cwd
        store, cache_dir = store.resolve(), str(Path(cache_dir).resolve())
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    items = [(i.id, str(store / i.file)) for i in unique]
    matter = make_matter(params.matte, params.rembg_model)
    logger = get_run_logger()
    runner = (dask_batches(params.dask_address, {"raw store": str(store), "cache": cache_dir}) if on_dask
              else local_batches(pool.resolve_workers(params.workers)))
    # On Dask every task rebuilds Prefect's settings and API client on its worker: fewer, larger batches there.
    batch_size = params.dask_batch_size if on_dask else params.batch_size
    with runner as batches:
        cheap = _mapped(batches, screen_cheap_task, items, batch_size, "cheap",
                        params=params, cache_dir=cache_dir)

        near = dedup_task(dedup_candidates(cheap), params.dup_max_distance)
        paths = dict(items)
        survivors = [(i, p) for i, p in items if cheap[i]["reason"] is None and i not in near]
        content = _mapped(batches, screen_content_task, survivors, batch_size, "content",
                          params=params, cache_dir=cache_dir)

        logger.info(matter.note)
        jobs = [(i, paths[i], content[i]["face_box"]) for i, _ in survivors if content[i]["reason"] is None]
        # Workers render with the matte this process chose (auto resolves here), the one in the cache key.
        render_params = params.updated(matte=matter.name) if on_dask else params
        pngs = _mapped(batches, render_task, jobs, batch_size, "render",
                       params=render_params, cache_dir=cache_dir, matte_name=matter.name)

    records = assemble(inputs, cheap, near, content)
    kinds = ",".join(sorted({i.source for i in inputs}))  # demo, folder, zip, tar, instagram: from provenance
    dataset = publish_task(out, records, pngs, params.resolution, params.shard_size,
                           extra={"matte": matter.name, "source": kinds})
    report_task(records, {**paths, **pngs}, dataset)
    logger.info("%s accepted of %s inputs\n%s", dataset["count"], dataset["inputs"], summary_text(records))
    result = {"out": str(Path(out).resolve()), "raw_dir": raw_dir, "matte_note": matter.note, **dataset}
    if version:  # the DVC project is the one the dataset lies in, wherever the flow runs
        folder = Path(out).resolve()
        result["version"] = version_dataset_task(str(folder), repo_root=str(folder.parent))
    return result
