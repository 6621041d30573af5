"""Ingest: bring a source's images into the raw store data/raw/<name>/ (files by hash + provenance)."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from tasks.common import progress
from tasks.common.retry import retry_unless_setup_error
from tasks.ingestion.sources.local import MemberLimits, ingest_path
from tasks.ingestion.sources.raw import sanitize_name
from tasks.common.settings import IngestSettings, given, load

_ARCHIVE_EXT = re.compile(r"\.(zip|tar|tgz|tar\.(gz|bz2|xz))$", re.IGNORECASE)


def raw_name(source: str, input_path: str | None = None, hashtag: str | None = None) -> str:
    """The folder name under data/raw/ for a source: demo, hashtag-<tag>, a folder's name, or an archive's
    file name with its extension (photos.zip).

    A folder and an archive of the same name never share a raw store: `X/` → X, `X.zip` → X.zip,
    `X.tar` → X.tar, and a folder named like an archive (`X.zip/`) → X.zip-folder. Raw stores of archives
    written before this rule (data/raw/X for X.zip) are left as they are; the archive is ingested again
    into its own store.
    """
    if source == "demo":
        return "demo"
    if source == "hashtag":
        return "hashtag-" + re.sub(r"[^A-Za-z0-9_]", "", (hashtag or "").lstrip("#")).lower()
    path = Path(input_path or "input")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", sanitize_name(path.name)).strip("._") or "input"
    if path.is_dir() and _ARCHIVE_EXT.search(name):
        return name + "-folder"
    return name


def ingest_demo(raw_dir: Path, limits: MemberLimits) -> Path:
    """Build the embedded demo images (deterministic, offline) and ingest them as source "demo"."""
    from tasks.ingestion.sources.demo import write_demo

    with tempfile.TemporaryDirectory(prefix="ganflow-demo-") as tmp:
        write_demo(Path(tmp))
        ingest_path(Path(tmp), raw_dir, limits, lambda n: progress.advance("ingest", n), source="demo")
    return raw_dir


def ingest_local(input_path: str, raw_dir: Path, limits: MemberLimits) -> Path:
    ingest_path(Path(input_path), raw_dir, limits, lambda n: progress.advance("ingest", n))
    return raw_dir


def scrape_hashtag(hashtag: str, raw_dir: Path, max_posts: int, session_file: str | None,
                   username: str | None) -> Path:
    from tasks.ingestion.sources.instagram import ingest_hashtag

    ingest_hashtag(hashtag, raw_dir, max_posts=max_posts, session_file=session_file, username=username,
                   progress=lambda n: progress.advance("ingest", n))
    return raw_dir


def hashtag_settings(params_path: str | Path, hashtag: str | None,
                     overrides: BaseModel | dict[str, Any] | None = None) -> IngestSettings:
    """The `ingest` settings of a scrape of #hashtag: params.yaml's section (max_posts) with a run's overrides
    on top, for this hashtag whatever source the section names; a bad value is a one-line ParamsError. A params
    file without an `ingest` section (a curate-only one) gives the defaults: the run names the hashtag."""
    return load(IngestSettings, params_path, missing_ok=True, source="hashtag", hashtag=hashtag or "",
                **given(overrides))


def ingest_source(source: str, raw_dir: str | Path, limits: MemberLimits, input_path: str | None = None,
                  hashtag: str | None = None, max_posts: int | None = None, session_file: str | None = None,
                  username: str | None = None) -> Path:
    """Fill raw_dir from any source: what `ganflow ingest` (the DVC pipeline's ingest stage) runs."""
    if source == "hashtag":
        if not hashtag or max_posts is None:  # both come from IngestSettings, which requires them
            raise ValueError("a hashtag source needs the hashtag and max_posts (ingest.hashtag, ingest.max_posts)")
        return scrape_hashtag(hashtag, Path(raw_dir), max_posts, session_file, username)
    if source == "demo":
        return ingest_demo(Path(raw_dir), limits)
    # mypy: the CLI requires it for this source
    return ingest_local(input_path, Path(raw_dir), limits)  # type: ignore[arg-type]


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_task(source: str, raw_dir: str, limits: MemberLimits, input_path: str | None = None) -> str:
    return str(ingest_source(source, raw_dir, limits, input_path))


# Instagram answers 429/401 for minutes at a time: back off between whole attempts too. An attempt
# resumes from the frozen iterator, so a retry never downloads twice.
@task(name="scrape-hashtag", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=30),
      retry_jitter_factor=0.5, retry_condition_fn=retry_unless_setup_error, cache_policy=NO_CACHE)
def scrape_hashtag_task(hashtag: str, raw_dir: str, max_posts: int, session_file: str | None = None,
                        username: str | None = None) -> str:
    return str(scrape_hashtag(hashtag, Path(raw_dir), max_posts, session_file, username))
