"""A run URL mirrored by a local cache folder: training writes the cache exactly as a local run folder, and
`publish` copies what changed to the URL; `pull` brings the newest complete snapshot back.

Object stores have no rename, so a snapshot is published in two steps: every new or changed file is uploaded
under its own name (RUN/checkpoints/ckpt-<kimg>.pt, RUN/samples/..., fid.csv, best.pt ...), then, last, the small
manifest RUN/published.json naming each file with its size and sha256. A reader trusts only the manifest: an
object whose upload was cut off (a killed process, a store that shows partial writes) is either not named in it
or fails its sha256, and is never what a resume reads. The lease folder (tasks/training/lease.py) is not mirrored:
it lives at the URL itself.

A store that is down delays publishing, never training: a snapshot's upload is retried with backoff (each wait
said in the log), the checkpoint stays in the cache, and the next publish uploads whatever is still missing.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from models.run_dir import CHECKPOINTS, LEASE, checkpoint_kimg
from tasks.storage.url import cache_dir, check_no_credentials, filesystem, is_url, local_path, normalize

MANIFEST = "published.json"
FORMAT = 1
SNAPSHOT_PATIENCE_S = 600.0   # a snapshot's upload is retried this long, then left for the next publish
FINAL_PATIENCE_S = 1800.0     # the end of a run waits longer: nothing else would publish its last snapshot
_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class PublishError(OSError):
    """A run's last snapshot could not be published to its URL in the time allowed."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _skipped(rel: str) -> bool:
    """Files that are not the run's content: the lease (kept at the URL), temp files of a write in progress."""
    name = rel.rsplit("/", 1)[-1]
    return rel == MANIFEST or rel.split("/", 1)[0] == LEASE or name.startswith(".")


def _newest_kimg(names: list[str]) -> float:
    kimgs = [k for rel in names if rel.startswith(CHECKPOINTS + "/")
             if (k := checkpoint_kimg(rel.split("/", 1)[1])) is not None]
    return max(kimgs, default=-1.0)


def say(message: str) -> None:
    """To the flow run's log when there is one (the trainer's thread has none: stderr, which workers capture)."""
    if "prefect" in sys.modules:
        try:
            from prefect.logging import get_run_logger

            get_run_logger().warning(message)
            return
        except Exception:
            pass
    print(f"ganflow: {message}", file=sys.stderr, flush=True)


@dataclass
class RunMirror:
    url: str
    local: Path
    fs: Any = None
    root: str = ""
    published: dict[str, dict] = field(default_factory=dict)  # rel → {"size", "sha256"}: the URL's manifest as known
    _stamps: dict[str, tuple[int, int]] = field(default_factory=dict)  # rel → (size, mtime_ns) when last matched
    remote_only: dict[str, dict] = field(default_factory=dict)  # published checkpoints not pulled (a resume's older)
    _anchor: str | None = None  # the checkpoint a resume pulled: while the cache holds it, remote_only is its past

    def __post_init__(self) -> None:
        if self.fs is None:
            self.fs, self.root = filesystem(self.url)

    # ------------------------------------------------------------------ reading
    def remote(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read_manifest(self) -> dict | None:
        """The URL's manifest, None when nothing was published there yet (or it is not one: never trusted)."""
        try:
            data = json.loads(self.fs.cat_file(self.remote(MANIFEST)))
        except FileNotFoundError:
            return None
        except ValueError:
            say(f"{self.url}/{MANIFEST} does not parse: ignored (nothing published there counts)")
            return None
        files = data.get("files") if isinstance(data, dict) else None
        return data if isinstance(files, dict) and data.get("format") == FORMAT else None

    def _fetch(self, rel: str, entry: dict) -> bool:
        """Download rel into the cache if the local copy differs; True when the cache holds exactly entry's bytes.
        Downloaded to a temp name, checked against the manifest's size and sha256, then renamed."""
        dest = self.local / rel
        if dest.is_file() and dest.stat().st_size == entry["size"] and sha256_file(dest) == entry["sha256"]:
            self._stamp(rel)
            return True
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.pull")
        try:
            self.fs.get_file(self.remote(rel), str(tmp))
            if tmp.stat().st_size != entry["size"] or sha256_file(tmp) != entry["sha256"]:
                say(f"{self.url}/{rel} does not match the manifest (a torn or replaced upload): not used")
                return False
            os.replace(tmp, dest)
        except FileNotFoundError:
            say(f"{self.url}/{rel} is named in the manifest but missing: not used")
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._stamp(rel)
        return True

    def pull(self, checkpoints: str = "newest") -> None:
        """Bring the URL's published run into the cache: every file but the checkpoints, and of these the newest
        that verifies ("newest"), all of them ("all"), or none ("none"). A cache that is ahead of the URL (its
        snapshots were not all published yet, on this machine) is left as it is: it is the newer run."""
        manifest = _retrying(self.read_manifest, f"reading {self.url}/{MANIFEST}", SNAPSHOT_PATIENCE_S)
        if manifest is None:
            return
        files: dict[str, dict] = manifest["files"]
        local_names = [p.relative_to(self.local).as_posix() for p in self.local.rglob("*") if p.is_file()] \
            if self.local.is_dir() else []
        if _newest_kimg(local_names) > _newest_kimg(list(files)):
            say(f"{self.local} holds newer checkpoints than {self.url} has published: training continues from "
                "them and publishes them")
            self.published = dict(files)
            return
        ckpts = sorted((rel for rel in files if rel.startswith(CHECKPOINTS + "/")), key=_kimg_of)
        pulled = [rel for rel in files if rel not in ckpts and self._pull_file(rel, files[rel])]
        if checkpoints == "all":
            pulled += [rel for rel in ckpts if self._pull_file(rel, files[rel])]
        elif checkpoints == "newest":
            for rel in reversed(ckpts):
                if self._pull_file(rel, files[rel]):
                    pulled.append(rel)
                    self._anchor = rel
                    break
                ckpts.remove(rel)  # torn: never listed again
        self.published = {rel: files[rel] for rel in pulled}
        # Published checkpoints left at the URL (older than the one pulled): still the run's, kept in its manifest
        self.remote_only = {rel: files[rel] for rel in ckpts if rel not in self.published}

    def _pull_file(self, rel: str, entry: dict) -> bool:
        return bool(_retrying(lambda: self._fetch(rel, entry), f"pulling {self.url}/{rel}", SNAPSHOT_PATIENCE_S))

    def fetch(self, rel: str) -> Path:
        """One published file of the run in the cache (a snapshot to generate from or serve)."""
        manifest = _retrying(self.read_manifest, f"reading {self.url}/{MANIFEST}", SNAPSHOT_PATIENCE_S)
        entry = (manifest or {}).get("files", {}).get(rel)
        if entry is None:
            raise FileNotFoundError(f"{self.url}/{rel} is not published (no such file in {self.url}/{MANIFEST})")
        if not _retrying(lambda: self._fetch(rel, entry), f"pulling {self.url}/{rel}", SNAPSHOT_PATIENCE_S):
            raise FileNotFoundError(f"{self.url}/{rel} does not match its manifest entry")
        return self.local / rel

    # ------------------------------------------------------------------ writing
    def _stamp(self, rel: str) -> None:
        st = (self.local / rel).stat()
        self._stamps[rel] = (st.st_size, st.st_mtime_ns)

    def _changed(self) -> tuple[dict[str, dict], list[str]]:
        """The manifest the cache calls for now, and the files of it to upload."""
        entries: dict[str, dict] = {}
        upload: list[str] = []
        for p in sorted(self.local.rglob("*")) if self.local.is_dir() else []:
            rel = p.relative_to(self.local).as_posix()
            if not p.is_file() or p.is_symlink() or _skipped(rel):
                continue
            st = p.stat()
            known = self.published.get(rel)
            if known is not None and self._stamps.get(rel) == (st.st_size, st.st_mtime_ns):
                entries[rel] = known
                continue
            entry = {"size": st.st_size, "sha256": sha256_file(p)}
            entries[rel] = entry
            if known != entry:
                upload.append(rel)
        if self._anchor is not None and self._anchor in entries:  # not set aside (restart_on_change): same run
            entries = {**self.remote_only, **entries}
        return entries, upload

    def _publish_once(self) -> list[str]:
        entries, upload = self._changed()
        # checkpoints last among the objects: the manifest is what makes any of them count anyway
        for rel in sorted(upload, key=lambda r: r.startswith(CHECKPOINTS + "/")):
            self.fs.put_file(str(self.local / rel), self.remote(rel))
            self._stamp(rel)
        if upload or entries.keys() != self.published.keys():
            ckpts = sorted((r for r in entries if r.startswith(CHECKPOINTS + "/")), key=_kimg_of)
            manifest = {"format": FORMAT, "files": entries, "checkpoint": ckpts[-1] if ckpts else None,
                        "published_at": time.time(), "host": socket.gethostname()}
            self.fs.pipe_file(self.remote(MANIFEST), json.dumps(manifest, indent=1).encode())
        for rel in entries:
            if rel not in self._stamps and rel not in self.remote_only:
                self._stamp(rel)
        self.published = entries
        return upload

    def publish(self, final: bool = False) -> list[str]:
        """Upload what changed in the cache, then the manifest (see the module docstring); returns the files
        uploaded. Retried with backoff; after the patience a snapshot's publish gives up for now (the next one
        uploads what is missing), the final one raises PublishError."""
        patience = FINAL_PATIENCE_S if final else SNAPSHOT_PATIENCE_S
        result = _retrying(self._publish_once, f"publishing {self.local} to {self.url}", patience, give_up=None)
        if result is None:
            message = (f"could not publish {self.local} to {self.url} in {patience:g} s; the checkpoints stay in "
                       f"{self.local}" + ("" if final else " and the next snapshot publishes them"))
            if final:
                raise PublishError(message)
            say(message)
            return []
        return result


def _kimg_of(rel: str) -> float:
    return checkpoint_kimg(rel.rsplit("/", 1)[-1]) or 0.0


_MISSING = object()


def _retrying(fn: Callable[[], Any], what: str, patience_s: float, give_up: Any = _MISSING) -> Any:
    """fn(), retried with backoff while the store is unreachable or erring, each wait said; after patience_s the
    last error is raised (give_up=_MISSING) or give_up returned. FileNotFoundError and ValueError are answers."""
    start, attempt = time.monotonic(), 0
    while True:
        try:
            return fn()
        except (FileNotFoundError, ValueError, PermissionError):
            raise
        except Exception as e:  # connection refused, timeouts, 5xx: botocore's, aiohttp's, OSError
            wait = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
            if time.monotonic() - start + wait > patience_s:
                if give_up is _MISSING:
                    raise
                return give_up
            say(f"waiting for the object store: {what} failed ({type(e).__name__}: {_short(e)}); "
                f"retrying in {wait:g} s")
            time.sleep(wait)
            attempt += 1


def _short(e: BaseException) -> str:
    text = (str(e).splitlines() or [""])[0]
    return text[:160]


# ---------------------------------------------------------------------------------------------- one per run

_MIRRORS: dict[str, RunMirror] = {}   # by URL and by cache path: a flow and its stages share one mirror


def mirror_of(run_dir: str | os.PathLike) -> RunMirror | None:
    """The mirror of a run URL or of its cache folder (once opened in this process); None for a local run."""
    key = normalize(str(run_dir)) if is_url(run_dir) else str(Path(local_path(run_dir)).absolute())
    return _MIRRORS.get(key)


def url_of(run_dir: str | os.PathLike) -> str:
    """The run's URL when run_dir is one or is the cache of one, else the local path."""
    m = mirror_of(run_dir)
    return m.url if m is not None else local_path(run_dir)


def open_run(run_dir: str | os.PathLike, checkpoints: str = "newest") -> str:
    """The local folder to read and write a run in: for a URL its cache, pulled (see RunMirror.pull); for the
    cache of a URL opened already, itself; for a local path (or file://), that path."""
    check_no_credentials(run_dir)
    m = mirror_of(run_dir)
    if m is None and is_url(run_dir):
        url = normalize(str(run_dir))
        m = RunMirror(url, cache_dir(url))
        m.local.mkdir(parents=True, exist_ok=True)
        m.pull(checkpoints)
        _MIRRORS[url] = _MIRRORS[str(m.local.absolute())] = m
    elif m is not None and is_url(run_dir) and checkpoints == "all":
        m.pull("all")
    return str(m.local) if m is not None else local_path(run_dir)


def publish(run_dir: str | os.PathLike, final: bool = False) -> list[str]:
    """Publish a run's cache to its URL (nothing for a local run); see RunMirror.publish."""
    m = mirror_of(run_dir)
    return m.publish(final) if m is not None else []


def open_snapshot(snapshot: str | os.PathLike) -> str:
    """A local file for a snapshot: s3://.../RUN/best.pt or .../RUN/checkpoints/ckpt-*.pt is fetched into its run's
    cache and checked against the run's manifest; a local path is returned as it is."""
    check_no_credentials(snapshot)
    if not is_url(snapshot):
        return local_path(snapshot)
    url = normalize(str(snapshot))
    run, _, name = url.rpartition("/")
    rel = name
    if run.rsplit("/", 1)[-1] == CHECKPOINTS:
        run, rel = run.rsplit("/", 1)[0], f"{CHECKPOINTS}/{name}"
    m = mirror_of(run) or RunMirror(run, cache_dir(run))
    _MIRRORS.setdefault(run, m)
    _MIRRORS.setdefault(str(m.local.absolute()), m)
    return str(m.fetch(rel))


def checkpoints_where(run_dir: str | os.PathLike) -> str:
    """Where a run's checkpoints are, for people: URL/checkpoints (and its cache), or RUN/checkpoints."""
    m = mirror_of(run_dir)
    if m is None:
        return str(Path(local_path(run_dir)) / CHECKPOINTS)
    return f"{m.url}/{CHECKPOINTS} (cached in {m.local / CHECKPOINTS})"


def published_kimg(run_dir: str | os.PathLike) -> float | None:
    """For a run URL, the kimg of the newest checkpoint its manifest names (0 when none is published); None for
    a local run. What a watcher (the manager) reads of a run it does not train."""
    if not is_url(run_dir):
        return None
    m = mirror_of(run_dir) or RunMirror(normalize(str(run_dir)), cache_dir(normalize(str(run_dir))))
    manifest = m.read_manifest()
    newest = (manifest or {}).get("checkpoint")
    return _kimg_of(newest) if newest else 0.0


def newest_published_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """For a run URL, the newest checkpoint its manifest names, fetched into the run's cache and verified, without
    opening the run (no pull, no registration: the process that trains it opens it under its lease); None when
    nothing is published. What a check before training reads (the dataset the run was trained on)."""
    url = normalize(str(run_dir))
    m = RunMirror(url, cache_dir(url))
    newest = (_retrying(m.read_manifest, f"reading {url}/{MANIFEST}", SNAPSHOT_PATIENCE_S) or {}).get("checkpoint")
    return m.fetch(newest) if newest else None


def local_of(run_dir: str | os.PathLike) -> str:
    """The local folder of a run: its cache when it is a URL opened in this process, else the path (a URL not
    opened yet has no local files: its cache folder, perhaps empty)."""
    m = mirror_of(run_dir)
    if m is not None:
        return str(m.local)
    return str(cache_dir(normalize(str(run_dir)))) if is_url(run_dir) else local_path(run_dir)
