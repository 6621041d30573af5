"""Dataset versions as git and DVC hold them, and the project as a git + DVC repo.

`dataset_versions(root)` walks `git log` over the .dvc files under data/ and the dvc.lock files, and reads
each version's dataset.json from the local DVC cache, else from the default remote (a .dir listing and
one small object per version: tens of ms for dozens of versions, where `dvc.api.read` opens a repo per
revision). No Prefect import here, so `ganflow datasets` starts fast.
"""
from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

DATASET = "dataset.json"
CURATED = "data/curated/"  # where a version whose .dir listing can't be read is still taken for a dataset


class VersioningError(ValueError):
    """Not a git + DVC project, not a curated dataset folder, or a lock not had in time."""


def git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    except FileNotFoundError as e:
        raise VersioningError("git is not installed: dataset versions are recorded in git commits") from e
    if check and out.returncode:
        raise VersioningError(f"git {' '.join(args[:2])} failed in {root}: {out.stderr.strip()}")
    return out


def project_root(repo_root: str | Path = ".") -> Path:
    """The DVC project folder at or above `repo_root`, inside a git work tree; a clear error otherwise."""
    start = Path(repo_root).resolve()
    if not start.is_dir():
        raise VersioningError(f"{start} is not a folder")
    top = git(start, "rev-parse", "--show-toplevel", check=False)
    if top.returncode:
        raise VersioningError(f"{start} is not inside a git repository: dataset versions are git commits of "
                              "DVC files (run `git init` and `dvc init` in the project, or pass its folder)")
    git_top = Path(top.stdout.strip()).resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
        if folder == git_top:
            break
    raise VersioningError(f"{git_top} is a git repository but not a DVC project (no .dvc/ folder): "
                          "run `dvc init` there")



class ObjectReader:
    """DVC objects by md5: from the local cache, else the default remote (opened on first need)."""

    _repo: Any
    _dbs: list | None

    def __init__(self, root: Path) -> None:
        self.root, self._repo, self._dbs = root, None, None

    def _stores(self) -> list:
        if self._dbs is None:
            from dvc.repo import Repo

            self._repo = Repo(str(self.root))
            self._dbs = [self._repo.cache.local]
            try:
                self._dbs.append(self._repo.cloud.get_remote_odb(command="datasets"))
            except Exception:  # no remote, or an unusable one: the local cache is all there is
                pass
        return self._dbs

    def read(self, oid: str) -> bytes | None:
        for db in self._stores():
            try:
                with db.fs.open(db.oid_to_path(oid), "rb") as f:
                    return f.read()
            except Exception:  # missing there (or a remote that can't be read): try the next store
                continue
        return None

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()


def _tracked_datasets(file: str, text: str) -> list[tuple[str, str, str]]:
    """(dataset path, DVC hash, source) for each dataset-like out in a .dvc file or a dvc.lock."""
    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError:  # a broken commit of the file: nothing to read there
        return []
    base = Path(file).parent
    if file.endswith(".dvc"):
        return [((base / o["path"]).as_posix(), o.get("md5", ""), file) for o in doc.get("outs") or []
                if o.get("md5", "").endswith(".dir")]
    found = []
    for name, stage in (doc.get("stages") or {}).items():
        for o in stage.get("outs") or []:
            path, md5 = (base / o["path"]).as_posix(), o.get("md5", "")
            if md5.endswith(".dir"):
                found.append((path, md5, f"{file}:{name}"))
            elif Path(path).name == DATASET:  # a stage that lists the dataset's files as separate outs
                found.append((Path(path).parent.as_posix(), md5, f"{file}:{name}"))
    return found


def _dataset_json(reader: ObjectReader, md5: str) -> tuple[dict | None, bool]:
    """(dataset.json of this version or None, whether the version is a dataset as far as is known)."""
    if md5.endswith(".dir"):  # a folder: its listing names dataset.json's own hash
        listing = reader.read(md5)
        if listing is None:
            return None, True
        entry = next((e for e in json.loads(listing) if e.get("relpath") == DATASET), None)
        if entry is None:
            return None, False
        md5 = entry["md5"]
    data = reader.read(md5)
    return (json.loads(data) if data else None), True


def _blobs(root: Path, specs: list[str]) -> list[str | None]:
    """Contents of `rev:path` for each spec, in one `git cat-file --batch`."""
    out = subprocess.run(["git", "-C", str(root), "cat-file", "--batch"], input="\n".join(specs).encode() + b"\n",
                         capture_output=True, check=True).stdout
    texts: list[str | None] = []
    pos = 0
    for _ in specs:
        end = out.index(b"\n", pos)
        header = out[pos:end].split()
        if header[-1] == b"missing":
            texts.append(None)
            pos = end + 1
            continue
        size = int(header[2])
        texts.append(out[end + 1:end + 1 + size].decode())
        pos = end + 1 + size + 1
    return texts


def dataset_versions(repo_root: str | Path = ".", dataset: str | None = None) -> list[dict]:
    """One row per (git commit, dataset) where a dataset's DVC tracking changed, oldest first:
    {rev, date, dataset, md5, source, count, inputs, reasons, content_hash}; counts are None when that
    version's dataset.json is in neither the local cache nor the remote."""
    root = project_root(repo_root)
    log = git(root, "log", "--reverse", "--format=%x00%H %cI", "--name-only", "--relative", "--",
               ":(glob)data/**/*.dvc", ":(glob)**/dvc.lock").stdout
    commits = []
    for chunk in log.split("\0")[1:]:
        head, *files = chunk.strip().split("\n")
        rev, date = head.split(" ", 1)
        commits.append((rev, date, [f for f in files if f]))
    specs = [f"{rev}:./{f}" for rev, _, files in commits for f in files]
    texts = iter(_blobs(root, specs) if specs else [])
    want = PurePosixPath(dataset).as_posix() if dataset else None
    reader, rows = ObjectReader(root), []
    seen: dict[str, str] = {}
    try:
        for rev, date, files in commits:
            for file in files:
                text = next(texts)
                for path, md5, source in _tracked_datasets(file, text) if text else []:
                    if seen.get(path) == md5 or (want and path != want):
                        continue
                    info, is_dataset = _dataset_json(reader, md5)
                    if not is_dataset or (info is None and not path.startswith(CURATED)):
                        continue
                    seen[path] = md5
                    info = info or {}
                    rows.append({"rev": rev, "date": date, "dataset": path, "md5": md5, "source": source,
                                 "count": info.get("count"), "inputs": info.get("inputs"),
                                 "reasons": info.get("reasons"), "content_hash": info.get("content_hash")})
    finally:
        reader.close()
    return rows


def format_date(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
