"""The curated dataset on disk: manifest.jsonl, tar shards of PNGs, dataset.json.

Everything is written deterministically (sorted, fixed tar headers, no timestamps) and atomically,
so a rerun on the same inputs gives byte-identical files and rewrites none of them.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common.outdir import GENERATOR

MANIFEST = "manifest.jsonl"
DATASET = "dataset.json"
SHARDS = "shards"
_SHARD_NAME = re.compile(r"shard-\d{6}\.tar")  # the only files in shards/ ganflow ever removes: its own


@dataclass(frozen=True, slots=True)  # slots: one per input, held until the manifest is written
class Record:
    id: str                   # sha256 of the source bytes
    source: str               # folder | zip | tar | instagram | demo
    source_name: str
    status: str               # accepted | rejected
    reason: str | None        # None when accepted; else a short stable word
    scores: dict = field(default_factory=dict)


def _atomic_write(path: Path, data: bytes) -> bool:
    """Write unless the file already holds exactly these bytes; return whether it was written."""
    if path.exists() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True


def manifest_lines(records: list[Record]) -> Iterator[bytes]:
    """manifest.jsonl's lines, one record at a time (sorted by name, then id)."""
    for r in sorted(records, key=lambda r: (r.source_name, r.id)):
        yield (json.dumps(asdict(r), sort_keys=True, ensure_ascii=False) + "\n").encode()


def _atomic_write_lines(path: Path, lines: Iterable[bytes]) -> bool:
    """Stream lines to a temp file, then replace `path` unless it already holds exactly these bytes (so an
    unchanged manifest keeps its mtime and DVC's cache of it). Never holds the whole file in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb", buffering=1 << 20) as f:
        for line in lines:
            digest.update(line)
            f.write(line)
        f.flush()
        os.fsync(f.fileno())
    if path.exists() and path.stat().st_size == os.path.getsize(tmp) and _sha256_file(path) == digest.hexdigest():
        os.unlink(tmp)
        return False
    os.replace(tmp, path)
    return True


def read_manifest(out_dir: str | Path) -> list[Record]:
    with (Path(out_dir) / MANIFEST).open(encoding="utf-8") as f:
        return [Record(**json.loads(line)) for line in f if line.strip()]


def reason_counts(records: list[Record]) -> dict[str, int]:
    counts = Counter(r.reason or "accepted" for r in records)
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] != "accepted", -kv[1], kv[0])))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_tar(path: Path, members: list[tuple[str, Path]]) -> str:
    """Stream a tar with fixed headers (mtime 0, root owner, 0644) to `path`, atomically; same members
    give the same bytes, and an identical existing shard is left untouched. Returns its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for name, src in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = src.stat().st_size, 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with src.open("rb") as data:
                    tf.addfile(info, data)
        f.flush()
        os.fsync(f.fileno())
    sha = _sha256_file(Path(tmp))
    if path.exists() and _sha256_file(path) == sha:
        os.unlink(tmp)
    else:
        os.replace(tmp, path)
    return sha


def write_dataset(out_dir: str | Path, records: list[Record], pngs: dict[str, Path], resolution: int,
                  shard_size: int, extra: dict | None = None) -> dict:
    """Write manifest, shards and dataset.json for `records`; `pngs` maps accepted id → PNG path."""
    out = Path(out_dir)
    accepted = sorted({r.id for r in records if r.status == "accepted"})
    missing = [i for i in accepted if i not in pngs]
    if missing:
        raise ValueError(f"{len(missing)} accepted images have no rendered PNG, e.g. {missing[0]}")
    shards, content = [], hashlib.sha256()
    for k in range(0, len(accepted), shard_size):
        ids = accepted[k:k + shard_size]
        name = f"{SHARDS}/shard-{k // shard_size:06d}.tar"
        sha = _write_tar(out / name, [(f"{i}.png", pngs[i]) for i in ids])
        shards.append({"file": name, "count": len(ids), "sha256": sha})
        for i in ids:
            content.update(f"{i} {_sha256_file(pngs[i])}\n".encode())
    # Shards from an earlier, larger run would otherwise linger and be read as data. Only ganflow's own
    # shard names go: a file it did not write is never deleted.
    keep = {s["file"] for s in shards}
    for old in sorted((out / SHARDS).glob("*.tar")) if (out / SHARDS).exists() else []:
        if _SHARD_NAME.fullmatch(old.name) and f"{SHARDS}/{old.name}" not in keep:
            old.unlink()
    _atomic_write_lines(out / MANIFEST, manifest_lines(records))
    dataset = {
        "generator": GENERATOR,  # how a later run knows this folder is ganflow's to rewrite
        "count": len(accepted),
        "resolution": resolution,
        "content_hash": content.hexdigest(),
        "inputs": len(records),
        "reasons": reason_counts(records),
        "shards": shards,
        **(extra or {}),
    }
    _atomic_write(out / DATASET, (json.dumps(dataset, indent=2, sort_keys=True) + "\n").encode())
    return dataset


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(out_dir: str, records: list[Record], pngs: dict[str, str], resolution: int,
                 shard_size: int, extra: dict | None = None) -> dict:
    return write_dataset(out_dir, records, {i: Path(p) for i, p in pngs.items()}, resolution, shard_size, extra)
