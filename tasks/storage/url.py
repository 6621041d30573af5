"""What a run folder's name means: a plain path (or file://) is the folder itself; an object-store URL
(s3://bucket/runs/photos, gs://..., az://...) is read and written through fsspec and a local cache folder.

The cloud's own environment configures the store (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_PROFILE; GOOGLE_APPLICATION_CREDENTIALS; AZURE_STORAGE_ACCOUNT_NAME ...): botocore reads AWS_ENDPOINT_URL
itself, so MinIO or moto need no ganflow setting. Credentials never travel in a URL: one that carries them is
refused without echoing them (a URL lands in params, logs, flow-run parameters and artifacts).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

LOCAL_SCHEMES = ("", "file", "local")


class CredentialsInUrl(ValueError):
    """A run URL with a user or password in it: refused before anything reads or logs it."""


def is_url(run_dir: str | os.PathLike) -> bool:
    """An object-store URL (not a plain path, not file://)."""
    text = str(run_dir)
    return "://" in text and urlsplit(text).scheme.lower() not in LOCAL_SCHEMES


def check_no_credentials(run_dir: str | os.PathLike) -> None:
    """Refuse scheme://USER:SECRET@bucket/...; the message names the scheme and bucket only."""
    text = str(run_dir)
    if "://" not in text:
        return
    parts = urlsplit(text)
    if "@" in parts.netloc:
        bucket = parts.netloc.rsplit("@", 1)[1]
        raise CredentialsInUrl(f"{parts.scheme}://…@{bucket}/…: a run URL must not carry credentials; remove them "
                               "and give them through the cloud's own environment or configuration "
                               "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, "
                               "AZURE_STORAGE_...)")


def local_path(run_dir: str | os.PathLike) -> str:
    """A plain path for a local run folder: file:///x/y → /x/y; anything else unchanged."""
    text = str(run_dir)
    if "://" in text and urlsplit(text).scheme.lower() in ("file", "local"):
        return urlsplit(text).path
    return text


def normalize(url: str) -> str:
    """s3://bucket/runs/photos/ → s3://bucket/runs/photos (one name per run)."""
    return url.rstrip("/")


def cache_root() -> Path:
    """Where run URLs are cached: $XDG_CACHE_HOME/ganflow/runs (the XDG rule; ~/.cache when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ganflow" / "runs"


def cache_dir(url: str) -> Path:
    """The local folder that mirrors a run URL: cache_root()/<scheme>/<bucket>/<key path>."""
    parts = urlsplit(normalize(url))
    segments = [s for s in f"{parts.netloc}/{parts.path}".split("/") if s]
    if not segments or any(s in (".", "..") for s in segments):
        raise ValueError(f"{parts.scheme}://{parts.netloc}{parts.path}: not a run URL (scheme://bucket/path)")
    return cache_root().joinpath(parts.scheme.lower(), *segments)


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL; the cloud's fsspec package must be installed."""
    import fsspec

    check_no_credentials(url)
    fs, path = fsspec.core.url_to_fs(normalize(url))
    return fs, path
