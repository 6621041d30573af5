"""What the manager sees of a run folder: a local path's own files, or for a URL run (s3://...) the state its
owner published there (the manifest), never the local relative folder "s3:/..." a plain RunDir would make."""
from __future__ import annotations

import os
from pathlib import Path

from models.run_dir import RunDir
from tasks.storage.mirror import RunMirror, _kimg_of, mirror_of
from tasks.storage.url import cache_dir, is_url, normalize


def newest_checkpoint(run_dir: str | os.PathLike) -> tuple[float, str] | None:
    """(kimg, where) of the run's newest checkpoint: for a URL the one its manifest names (the URL of it)."""
    if not is_url(run_dir):
        found = RunDir(str(run_dir)).newest_checkpoint()
        return (found[0], str(found[1])) if found else None
    url = normalize(str(run_dir))
    m = mirror_of(url) or RunMirror(url, cache_dir(url))
    name = (m.read_manifest() or {}).get("checkpoint")
    return (_kimg_of(name), f"{url}/{name}") if name else None


def local_run(run_dir: str | os.PathLike) -> RunDir:
    """The run's local folder (a URL's cache) for the manager's own files, such as attempt logs."""
    if is_url(run_dir):
        return RunDir(Path(cache_dir(normalize(str(run_dir)))))
    return RunDir(str(run_dir))
