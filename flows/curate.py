"""The curate flow: source → screen (decode, size, blur, gray) → dedup → screen (faces, text) → render → publish.

Tasks run over batches of images (never one task per image), through a bounded window of futures, and pass
paths and hashes only. With a Dask scheduler address (curate.dask_address; --dask; the settings parameter's
dask_address) the batch tasks run on that cluster; everything else (ingest, dedup, publish) stays in the flow's process.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from prefect import flow, get_run_logger

from tasks.curation import pool
from tasks.common import progress
from tasks.curation.cluster import Batches, dask_batches, local_batches
from tasks.curation.dedup import dedup_task
from tasks.ingestion.ingest import hashtag_settings, ingest_task, raw_name, scrape_hashtag_task
from tasks.curation.matte import Matter, make_matter
from tasks.common.outdir import check_dataset_dir, check_raw_dir, check_store_root
from tasks.common.run_labels import GANFLOW, dataset_tag, label_this_run
from tasks.common.settings import (DEFAULT_PARAMS, CurateOverrides, CurateSettings, IngestOverrides, IngestSettings, IngestSource,
                                   given, load)
from tasks.curation.publish import publish_task
from tasks.curation.render import render_task
from tasks.curation.report import report_task, summary_text
from tasks.curation.result import CurationResult
from tasks.curation.screen import screen_cheap_task, screen_content_task
from tasks.ingestion.sources.local import MemberLimits
from tasks.ingestion.sources.raw import PROVENANCE, RawItem, read_provenance
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
    source: IngestSource = "demo",        # demo data, a folder/zip/tar, or an Instagram hashtag
    input_path: str | None = None,        # folder (recursive), .zip or .tar when source="path"
    hashtag: str | None = None,           # hashtag without '#' when source="hashtag"
    out: str = "data/curated/demo",       # where manifest.jsonl, shards/ and dataset.json go
    raw_root: str = "data/raw",           # raw store root: data/raw/<name>/
    cache_dir: str = "data/cache",        # per-image results, so reruns do no work twice
    params_path: str = str(DEFAULT_PARAMS),  # thresholds and settings (sections `curate` and `ingest`)
    settings: CurateOverrides = CurateOverrides(),  # type: ignore[valid-type]  # a model made from CurateSettings
    ingest_settings: IngestOverrides = IngestOverrides(),  # type: ignore[valid-type]  # from IngestSettings
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
        params_path: Thresholds and settings (sections curate and, for a hashtag, ingest).
        settings: Curation settings for this run, each with its bounds; an empty one keeps params.yaml's value
            (section curate). dask_address: a Dask scheduler (tcp://host:8786) whose workers run the batch tasks
            (screening, rendering); the raw store and the cache must then be at the same path on every worker.
        ingest_settings: Ingest settings for this run (max_posts: posts to take from the hashtag); an empty one
            keeps params.yaml's value (section ingest).
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
    if not params.dask_address:
        pool.warm(params.workers)  # worker processes start while ingest runs
    if raw_dir is None:
        raw_dir = _ingest(source, input_path, hashtag, raw_root, MemberLimits.from_params(params),
                          hashtag_settings(params_path, hashtag, ingest_settings) if source == "hashtag" else None,
                          session_file, ig_user)
    elif not (Path(raw_dir) / PROVENANCE).is_file():
        raise FileNotFoundError(f"{raw_dir} is not a raw store (no {PROVENANCE}): run `ganflow ingest` first")
    inputs = read_provenance(Path(raw_dir))
    matter = make_matter(params.matte, params.rembg_model, params.matte_mask)
    found = _screen_and_render(params, inputs, Path(raw_dir), cache_dir, matter)
    dataset = _publish(out, inputs, found, params, matter)
    # ganflow's tags whoever started the run, and the dataset's content hash, which train runs on it carry too.
    label_this_run([GANFLOW, "curate", dataset_tag(dataset["content_hash"])])
    result = CurationResult(out=str(Path(out).resolve()), raw_dir=raw_dir, matte_note=matter.note, dataset=dataset,
                            version=_version(out) if version else None)
    return result.to_dict()  # a plain dict at the flow's edge: the run's result, read back with from_dict


def _ingest(source: str, input_path: str | None, hashtag: str | None, raw_root: str, limits: MemberLimits,
            scrape: IngestSettings | None, session_file: str | None, ig_user: str | None) -> str:
    """Copy the source's images into its raw store RAW_ROOT/NAME/ (a hashtag's with `scrape`'s settings)."""
    store = check_store_root(raw_root, "raw_root") / raw_name(source, input_path, hashtag)
    raw_dir = str(check_raw_dir(str(store), "raw_root"))
    progress.begin("ingest", 0)
    if scrape is not None:
        scrape_hashtag_task(scrape.hashtag, raw_dir, scrape.max_posts, session_file, ig_user)
    else:
        ingest_task(source, raw_dir, limits, input_path)
    progress.end("ingest")
    return raw_dir


class _Found(NamedTuple):
    """What the batch stages found, by image id."""
    paths: dict[str, str]          # every distinct input's file in the raw store
    cheap: dict[str, dict]         # decode, size, blur, gray verdicts, with their scores (perceptual hash, ...)
    near: dict[str, tuple[str, int]]  # near-duplicates: id -> (the id it duplicates, Hamming distance)
    content: dict[str, dict]       # face and text verdicts of those that passed both
    pngs: dict[str, str]           # the accepted images rendered square, matted


def _screen_and_render(params: CurateSettings, inputs: list[RawItem], store: Path, cache_dir: str,
                       matter: Matter) -> _Found:
    """Screen the distinct inputs in batches (cheap checks, near-duplicates, content), then render those kept."""
    unique, _ = split_exact_copies(inputs)
    on_dask = bool(params.dask_address)
    if on_dask:  # workers on other machines see the same absolute paths, never this process's cwd
        store, cache_dir = store.resolve(), str(Path(cache_dir).resolve())
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    items = [(i.id, str(store / i.file)) for i in unique]
    runner = (dask_batches(params.dask_address, {"raw store": str(store), "cache": cache_dir}) if on_dask
              else local_batches(pool.resolve_workers(params.workers)))
    # On Dask every task rebuilds Prefect's settings and API client on its worker: fewer, larger batches there.
    batch_size = params.dask_batch_size if on_dask else params.batch_size
    with runner as batches:
        cheap, near, content, survivors = _screen(batches, items, params, cache_dir, batch_size)
        get_run_logger().info(matter.note)
        paths = dict(items)
        jobs = [(i, paths[i], content[i]["face_box"]) for i, _ in survivors if content[i]["reason"] is None]
        # Workers render with the matte this process chose (auto resolves here), the one in the cache key.
        render_params = params.updated(matte=matter.name) if on_dask else params
        pngs = _mapped(batches, render_task, jobs, batch_size, "render",
                       params=render_params, cache_dir=cache_dir, matte_name=matter.name)
    return _Found(paths, cheap, near, content, pngs)


def _screen(batches: Batches, items: list[tuple[str, str]], params: CurateSettings, cache_dir: str,
            batch_size: int) -> tuple[dict, dict[str, tuple[str, int]], dict, list[tuple[str, str]]]:
    """Cheap checks on every item, near-duplicates among those that pass, content checks on the rest; returns
    the three verdicts and the items that reached the content checks."""
    cheap = _mapped(batches, screen_cheap_task, items, batch_size, "cheap", params=params, cache_dir=cache_dir)
    near = dedup_task(dedup_candidates(cheap), params.dup_max_distance)
    survivors = [(i, p) for i, p in items if cheap[i]["reason"] is None and i not in near]
    content = _mapped(batches, screen_content_task, survivors, batch_size, "content",
                      params=params, cache_dir=cache_dir)
    return cheap, near, content, survivors


def _publish(out: str, inputs: list[RawItem], found: _Found, params: CurateSettings, matter: Matter) -> dict:
    """Write the manifest, shards and dataset.json, report the reasons; returns dataset.json's contents."""
    records = assemble(inputs, found.cheap, found.near, found.content)
    kinds = ",".join(sorted({i.source for i in inputs}))  # demo, folder, zip, tar, instagram: from provenance
    dataset = publish_task(out, records, found.pngs, params.resolution, params.shard_size,
                           extra={"matte": matter.name, "source": kinds})
    report_task(records, {**found.paths, **found.pngs}, dataset)
    get_run_logger().info("%s accepted of %s inputs\n%s", dataset["count"], dataset["inputs"],
                          summary_text(records))
    return dataset


def _version(out: str) -> dict:
    """Version the dataset with DVC; the DVC project is the one the dataset lies in, wherever the flow runs."""
    folder = Path(out).resolve()
    return version_dataset_task(str(folder), repo_root=str(folder.parent))
