"""A curated dataset on a machine that lacks it: fetched with DVC from the project's default remote and checked
against the content hash a run recorded, before anything trains on it.

    ensure_dataset("data/curated/photos", run_hash) -> Path("data/curated/photos")

- The folder holds dataset.json: nothing is fetched and DVC is not even imported (a `dvc repro` stage holds DVC's
  repo lock while it runs, and a plain `ganflow train` should not pay DVC's import); its content hash must be the
  expected one when one is given.
- It does not: the DVC entry that tracks the folder (its .dvc file, or a dvc.lock out of the stage that writes it)
  is fetched from the default remote into the cache, the dataset.json the entry names is read from the cache and
  its content hash compared, and only then is the folder checked out. Another version's data never lands there.

A missing remote, a folder DVC does not track or a hash that differs is one line (a VersioningError, which a task
does not retry); a download that fails (the remote unreachable, or not pushed to) is an OSError, which it does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tasks.versioning.history import DATASET, VersioningError, dataset_versions, project_root

LOCK_TIMEOUT_S = 600.0  # another ganflow DVC writer (a pull or a version_dataset) or a `dvc repro` holding DVC's lock


class DatasetDownloadError(OSError):
    """DVC could not download the dataset from the remote: a transient failure, or files never pushed there."""


def short(content_hash: str) -> str:
    return content_hash[:12]


def same_dataset(content_hash: str, expected: str) -> bool:
    """Whether content_hash is the expected one; expected may be shortened to the 12 digits of the `dataset:` tag."""
    return bool(content_hash) and len(expected) >= 12 and content_hash.startswith(expected)


def ensure_dataset(path: str | Path, expected_hash: str | None = None) -> Path:
    """The curated dataset at `path`, fetched with DVC from the default remote when this machine lacks it; its
    content hash (dataset.json's content_hash) is `expected_hash` when one is given, or this is a one-line error."""
    folder = Path(path)
    meta = folder / DATASET
    if meta.is_file():
        have = _content_hash(meta.read_bytes(), meta)
        if expected_hash and not same_dataset(have, expected_hash):
            raise VersioningError(f"{folder} holds dataset {short(have)}, not {short(expected_hash)} that this run "
                                  "trained on: put that version back (`ganflow datasets` lists them), or train on "
                                  "this one in a new run folder")
        return folder
    _fetch_and_check_out(folder, expected_hash)
    return folder


def _content_hash(data: bytes, where: Any) -> str:
    try:
        value = json.loads(data).get("content_hash", "")
    except (ValueError, AttributeError):
        raise VersioningError(f"{where} is not a curated dataset's dataset.json (no content_hash)") from None
    if not isinstance(value, str) or not value:
        raise VersioningError(f"{where} has no content_hash: curate the dataset again with ganflow")
    return value


def _fetch_and_check_out(folder: Path, expected: str | None) -> None:
    from dvc.repo import Repo

    from tasks.versioning.record import _waiting_for_dvc_lock, dvc_writer

    target = folder.absolute()
    root = _project_of(target, folder)
    with dvc_writer(root, LOCK_TIMEOUT_S):
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        if (folder / DATASET).is_file():  # another process (torchrun's other ranks) fetched it meanwhile
            ensure_dataset(folder, expected)
            return
        with Repo(str(root)) as repo:
            outs = _tracking_outs(repo, target)
            if not outs:
                raise VersioningError(f"{folder} has no {DATASET} here and DVC does not track it in {root} (no "
                                      f"{folder}.dvc, no dvc.lock out): curate it here, or version it where it was "
                                      "curated (dvc add + dvc push) and commit the .dvc file")
            remote = _default_remote(repo, folder)
            # A folder inside a tracked one (data/curated tracked whole) is fetched alone; otherwise its outs.
            targets = [str(target)] if any(target != Path(o.fs_path) and target.is_relative_to(Path(o.fs_path))
                                           for o in outs) else [o.fs_path for o in outs]
            _download(repo, targets, folder, remote, deadline)
            meta = _cached_dataset_json(repo, outs, target, folder, remote)
            have = _content_hash(meta, f"{folder}/{DATASET} in the DVC cache")
            if expected and not same_dataset(have, expected):
                raise VersioningError(_mismatch_message(root, folder, have, expected))
            _waiting_for_dvc_lock(lambda: repo.checkout(targets=targets), deadline, LOCK_TIMEOUT_S)
    # The checkout links the cache's objects (named by their md5) that the entry names: what was checked.
    if not (folder / DATASET).is_file():
        raise VersioningError(f"dvc checkout of {folder} wrote no {DATASET}")


def _project_of(target: Path, folder: Path) -> Path:
    """The DVC project around `target` (which may not exist yet): looked for from its nearest existing parent."""
    start = next((p for p in (target, *target.parents) if p.is_dir()), Path.cwd())
    try:
        return project_root(start)
    except VersioningError as e:
        raise VersioningError(f"{folder} has no {DATASET} here, and DVC cannot fetch it: {e}") from None


def _tracking_outs(repo, target: Path) -> list:
    """The DVC outs that hold the dataset: the folder itself, files inside it, or a tracked folder around it."""
    found = []
    for out in repo.index.outs:
        p = Path(out.fs_path)
        if p == target or p.is_relative_to(target) or target.is_relative_to(p):
            found.append(out)
    return found


def _default_remote(repo, folder: Path) -> str:
    """'name (url)' of the default remote; no default remote is the one-line error the caller reports."""
    name = repo.config["core"].get("remote")
    if not name:
        raise VersioningError(f"{folder} is not on this machine and DVC has no default remote to fetch it from: "
                              "`dvc remote add -d NAME s3://bucket/path` (README: Versioning datasets with DVC)")
    url = repo.config.get("remote", {}).get(name, {}).get("url", "?")
    return f"{name!r} ({url})"


def _download(repo, targets: list[str], folder: Path, remote: str, deadline: float) -> None:
    from dvc.exceptions import DownloadError, DvcException

    from tasks.versioning.record import _waiting_for_dvc_lock

    try:
        _waiting_for_dvc_lock(lambda: repo.fetch(targets=targets), deadline, LOCK_TIMEOUT_S, setup=False)
    except DownloadError as e:
        raise DatasetDownloadError(f"dvc could not download {folder} from remote {remote}: {e} (not pushed there "
                                   "from the machine that curated it, or the remote is unreachable)") from None
    except DvcException as e:  # a remote that refuses (credentials, a missing bucket) or that no plugin serves
        raise VersioningError(f"dvc could not fetch {folder} from remote {remote}: {e}") from None


def _cached_dataset_json(repo, outs: list, target: Path, folder: Path, remote: str) -> bytes:
    """dataset.json's bytes as the fetched entry names them, read from the local DVC cache."""
    want = target / DATASET
    for out in outs:
        p, oid = Path(out.fs_path), out.hash_info.value or ""
        if p == want and oid:
            return _read_object(repo, oid, folder, remote)
        if oid.endswith(".dir") and want.is_relative_to(p):
            rel = want.relative_to(p).as_posix()
            entry = next((e for e in json.loads(_read_object(repo, oid, folder, remote)) if e.get("relpath") == rel), None)
            if entry is not None:
                return _read_object(repo, entry["md5"], folder, remote)
    raise VersioningError(f"the DVC entry of {folder} holds no {DATASET}: it is not a curated dataset")


def _read_object(repo, oid: str, folder: Path, remote: str) -> bytes:
    """An object the fetch brought into the cache; DVC's fetch only warns about those the remote lacks."""
    db = repo.cache.local
    try:
        with db.fs.open(db.oid_to_path(oid), "rb") as f:
            return f.read()
    except OSError:
        raise DatasetDownloadError(f"dvc could not download {folder} from remote {remote}: its object {oid} is not "
                                   "there (not pushed there from the machine that curated it: `dvc push` there, or "
                                   "the remote is unreachable)") from None


def _mismatch_message(root: Path, folder: Path, have: str, expected: str) -> str:
    """The one line for a DVC entry that names other data than the run's, with the commit that has the run's."""
    rel = folder.absolute().relative_to(root).as_posix()
    try:
        revs = [r["rev"][:8] for r in dataset_versions(root, rel) if same_dataset(r.get("content_hash") or "", expected)]
    except Exception:  # the history is a hint only; the error stands without it
        revs = []
    where = (f"git commit {revs[-1]} versioned it: `git checkout {revs[-1]} -- {rel}.dvc` (or that commit's dvc.lock)"
             if revs else "`ganflow datasets` lists the versions git holds")
    return (f"{folder} as DVC tracks it here is dataset {short(have)}, not {short(expected)} that this run trained on "
            f"(nothing was checked out): {where}, then run again; or train on {short(have)} in a new run folder")
