"""Dataset versions with DVC: record a curated folder in DVC and git, from a flow or a script.

`version_dataset(path)` runs `dvc commit -f STAGE` when a dvc.yaml stage makes the folder (dvc.lock stays
the record, as `dvc repro` leaves it), else `dvc add PATH`; then `dvc push` of that target to the default
remote; then a git commit of only the files DVC changed for it (`git commit -- PATHS`, so other staged
work is never swept in). One writer at a time: an flock under .dvc/tmp/ serializes ganflow's callers
(threads, flows, processes), and DVC's own repo lock, when something else holds it (a user's
`dvc repro`), is waited for. DVC runs in-process (its Python API): the same operations as the CLI,
without a second of start-up per call.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tasks.versioning.history import DATASET, VersioningError, git, project_root
from tasks.common.retry import retry_unless_setup_error

WRITER_LOCK = "ganflow-dvc-writer.lock"  # under .dvc/tmp/, which DVC keeps out of git
POLL_SECONDS = 0.5

__all__ = ["VersioningError", "dvc_writer", "version_dataset", "version_dataset_task"]


@contextmanager
def dvc_writer(root: Path, timeout: float):
    """Hold the project's one DVC-writer lock (an flock, so it is freed when its holder dies)."""
    tmp = root / ".dvc" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with open(tmp / WRITER_LOCK, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise VersioningError(f"another ganflow DVC writer held {tmp / WRITER_LOCK} for more than "
                                          f"{timeout:.0f} s") from None
                time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _waiting_for_dvc_lock(op, deadline: float, timeout: float, setup: bool = True):
    """Run a DVC operation; while DVC's repo lock is someone else's (each try waits DVC's own 3 s), retry.
    With `setup`, DVC's other errors (overlapping outs, a missing dependency) become VersioningErrors,
    which a task does not retry; a failed push (the network, the remote) stays retryable."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError

    while True:
        try:
            return op()
        except LockError:
            if time.monotonic() > deadline:
                raise VersioningError(f"DVC's repo lock (.dvc/tmp/lock) stayed held by another dvc process "
                                      f"(a `dvc repro`?) for more than {timeout:.0f} s") from None
            time.sleep(POLL_SECONDS)
        except DvcException as e:
            if setup:
                raise VersioningError(f"dvc: {e}") from e
            raise


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def producing_stage(repo, folder: Path):
    """The dvc.yaml stage whose outs are `folder` or lie inside it, or None (then it is a `dvc add`)."""
    found = []
    for stage in repo.index.stages:
        if stage.is_data_source:  # a .dvc file from `dvc add`: adding again updates it
            continue
        for out in stage.outs:
            out_path = Path(out.fs_path)
            if _inside(out_path, folder):
                found.append(stage)
                break
            if _inside(folder, out_path):
                raise VersioningError(f"{folder} lies inside {out.def_path}, an out of stage {stage.name}: "
                                      f"version that out (`dvc commit {stage.name}`)")
    if len({s.addressing for s in found}) > 1:
        raise VersioningError(f"{folder} holds outs of several stages ({', '.join(s.name for s in found)})")
    return found[0] if found else None


def dataset_hash(stage, folder: Path) -> str:
    """DVC's hash of the dataset: the out that is the folder (its .dir hash), else, for a stage that lists
    the folder's files as outs, its dataset.json out (which names every shard's sha256)."""
    outs = {Path(o.fs_path): o for o in stage.outs}
    out = outs.get(folder) or outs.get(folder / DATASET)
    if out is None or not out.hash_info.value:
        raise VersioningError(f"stage {stage.name} has no out {folder} or {folder / DATASET} with a hash")
    return out.hash_info.value


def _tracking_files(stage, folder: Path, added: bool) -> list[Path]:
    """The git-tracked files DVC may have changed for this dataset: its .dvc file or the stage's dvc.lock,
    and the .gitignore beside each out."""
    if added:
        return [folder.with_name(folder.name + ".dvc"), folder.parent / ".gitignore"]
    lock = Path(stage.dvcfile.path).with_suffix(".lock")
    return [lock, *sorted({Path(o.fs_path).parent / ".gitignore" for o in stage.outs})]


def commit_message(rel: str, md5: str, info: dict) -> list[str]:
    reasons = ", ".join(f"{k} {v}" for k, v in (info.get("reasons") or {}).items())
    return [f"Dataset {rel}: {md5} ({info.get('count')} of {info.get('inputs')} images accepted)",
            f"content hash {info.get('content_hash', '?')}; {reasons}"]


def git_commit_only(root: Path, paths: list[Path], message: list[str], timeout: float = 60.0) -> tuple[str | None, bool]:
    """Commit just those of `paths` that changed (`git commit -- PATHS`: other staged work stays staged, out
    of this commit); return (the newest commit of paths[0], whether one was made now)."""
    rels = [p.relative_to(root).as_posix() for p in paths]
    known = set(git(root, "ls-files", "--", *rels).stdout.split("\n"))
    present = [r for r in rels if (root / r).exists() or r in known]
    if present:
        git(root, "add", "-A", "--", *present)
    diff = git(root, "diff", "--cached", "--name-only", "-z", "--relative", "--", *present).stdout if present else ""
    changed = [f for f in diff.split("\0") if f]
    if changed:
        args = ["commit", "-q", *(a for m in message for a in ("-m", m)), "--", *changed]
        deadline = time.monotonic() + timeout
        while (out := git(root, *args, check=False)).returncode:
            if "index.lock" not in out.stderr or time.monotonic() > deadline:  # a user's git command
                raise VersioningError(f"git commit of {', '.join(changed)} failed: {out.stderr.strip()}")
            time.sleep(POLL_SECONDS)
    rev = git(root, "log", "-1", "--format=%H", "--", rels[0]).stdout.strip() or None  # the .dvc file or dvc.lock
    return rev, bool(changed)


def version_dataset(path: str | Path, repo_root: str | Path = ".", push: bool = True, commit: bool = True,
                    lock_timeout: float = 3600.0) -> dict:
    """Record the curated dataset folder `path` (relative to `repo_root`) in DVC, push it, commit it in git.

    Returns {path, md5, git_rev, pushed, count, inputs, reasons, stage, committed}: `md5` is DVC's hash
    (`<md5>.dir` for a folder), `git_rev` the commit that holds this version (None with commit=False),
    `stage` the dvc.yaml stage committed (None after `dvc add`)."""
    root = project_root(repo_root)
    folder = (Path(repo_root) / path).resolve()
    if not _inside(folder, root) or folder == root:
        raise VersioningError(f"{folder} is not inside the DVC project {root}")
    if not (folder / DATASET).is_file():
        raise VersioningError(f"{folder} is not a curated dataset (no {DATASET}): run `ganflow curate --out` first")
    if os.environ.get("DVC_STAGE"):
        raise VersioningError(f"running inside `dvc repro` (stage {os.environ['DVC_STAGE']}): DVC records the "
                              "stage's outs itself when its command ends; version the dataset outside dvc repro")
    info = json.loads((folder / DATASET).read_text())
    rel = folder.relative_to(root).as_posix()

    from dvc.repo import Repo

    with dvc_writer(root, lock_timeout):
        deadline = time.monotonic() + lock_timeout
        repo = Repo(str(root))
        try:
            repo.scm_context.quiet = True  # no "To track the changes with git" hint: we commit them
            stage = producing_stage(repo, folder)
            if stage is not None:
                target = f"{stage.dvcfile.path}:{stage.name}"
                [stage] = _waiting_for_dvc_lock(lambda: repo.commit(target, force=True), deadline, lock_timeout)
            else:
                [stage] = _waiting_for_dvc_lock(lambda: repo.add(str(folder)), deadline, lock_timeout)
                target = stage.path
            md5 = dataset_hash(stage, folder)
            remote = repo.config["core"].get("remote")
            pushed = bool(push and remote)
            if pushed:
                _waiting_for_dvc_lock(lambda: repo.push(targets=[target]), deadline, lock_timeout, setup=False)
            producer = None if stage.is_data_source else stage.name
            tracking = _tracking_files(stage, folder, producer is None)
        finally:
            repo.close()
        git_rev, committed = (git_commit_only(root, tracking, commit_message(rel, md5, info))
                              if commit else (None, False))
    return {"path": rel, "md5": md5, "git_rev": git_rev, "pushed": pushed, "remote": remote if pushed else None,
            "count": info.get("count"), "inputs": info.get("inputs"), "reasons": info.get("reasons") or {},
            "stage": producer, "committed": committed}


def artifact_key(rel: str) -> str:
    """Prefect artifact keys are lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", Path(rel).name.lower()).strip("-") or "dataset"
    return f"dataset-{slug}"[:60]


def version_row(result: dict) -> dict:
    return {"dataset": result["path"], "dvc_md5": result["md5"], "git_rev": (result["git_rev"] or "")[:12],
            "pushed": result["pushed"], "inputs": result["inputs"], **result["reasons"]}


@task(name="version-dataset", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30,
      retry_condition_fn=retry_unless_setup_error)
def version_dataset_task(path: str, repo_root: str = ".", push: bool = True, commit: bool = True) -> dict:
    result = version_dataset(path, repo_root, push=push, commit=commit)
    create_table_artifact(key=artifact_key(result["path"]), table=[version_row(result)],
                          description=f"Dataset {result['path']} versioned with DVC: {result['md5']}")
    where = f"pushed to DVC remote '{result['remote']}'" if result["pushed"] else "not pushed (no DVC remote)"
    get_run_logger().info("Dataset %s: DVC %s, git %s, %s", result["path"], result["md5"],
                          (result["git_rev"] or "not committed")[:12], where)
    return result
