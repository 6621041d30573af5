"""The curated dataset on disk: manifest.jsonl, tar shards of PNGs, dataset.json.

Everything is written deterministically (sorted, fixed tar headers, no timestamps), as a whole new version
beside the old one switched in with one rename (tasks.curation.dataset_swap), so a rerun on the same inputs gives
byte-identical files and rewrites none of them, and an interrupted one leaves the old dataset whole.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE

from models.atomic_file import disk_full_error, disk_full_in
from tasks.common.outdir import GENERATOR
from tasks.curation.dataset_swap import new_version

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


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def manifest_lines(records: list[Record]) -> Iterator[bytes]:
    """manifest.jsonl's lines, one record at a time (sorted by name, then id)."""
    for r in sorted(records, key=lambda r: (r.source_name, r.id)):
        yield (json.dumps(asdict(r), sort_keys=True, ensure_ascii=False) + "\n").encode()


def _write_lines(path: Path, lines: Iterable[bytes]) -> None:
    """Stream lines to `path` (never the whole file in memory)."""
    with open(path, "xb", buffering=1 << 20) as f:
        for line in lines:
            f.write(line)
        f.flush()
        os.fsync(f.fileno())


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
    """Stream a tar with fixed headers (mtime 0, root owner, 0644) to `path`: same members give the same bytes.
    Returns its sha256."""
    with open(path, "xb") as f:
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
    return _sha256_file(path)


def write_dataset(out_dir: str | Path, records: list[Record], pngs: dict[str, Path], resolution: int,
                  shard_size: int, extra: dict | None = None) -> dict:
    """Write manifest, shards and dataset.json for `records`; `pngs` maps accepted id → PNG path.

    The new version is written whole beside the old (tasks.curation.dataset_swap), then switched in with one
    rename: a reader sees the old dataset or the new one, never a mix, and an interruption leaves the old one.
    Files whose bytes did not change are the old files (hard links), so an identical rerun rewrites nothing."""
    out = Path(out_dir)
    accepted = sorted({r.id for r in records if r.status == "accepted"})
    missing = [i for i in accepted if i not in pngs]
    if missing:
        raise ValueError(f"{len(missing)} accepted images have no rendered PNG, e.g. {missing[0]}")
    try:
        return _write_version(out, records, pngs, accepted, resolution, shard_size, extra)
    except OSError as e:
        if disk_full_in(e) is None:
            raise
        needed = sum(pngs[i].stat().st_size for i in accepted)  # the shards hold the PNGs and a little more
        raise disk_full_error(out, needed) from None


def _write_version(out: Path, records: list[Record], pngs: dict[str, Path], accepted: list[str], resolution: int,
                   shard_size: int, extra: dict | None) -> dict:
    with new_version(out) as version:
        stage = version.folder
        (stage / SHARDS).mkdir()
        shards, content = [], hashlib.sha256()
        for k in range(0, len(accepted), shard_size):
            ids = accepted[k:k + shard_size]
            name = f"{SHARDS}/shard-{k // shard_size:06d}.tar"
            sha = _write_tar(stage / name, [(f"{i}.png", pngs[i]) for i in ids])
            version.reuse_if_same(name)
            shards.append({"file": name, "count": len(ids), "sha256": sha})
            for i in ids:
                content.update(f"{i} {_sha256_file(pngs[i])}\n".encode())
        _write_lines(stage / MANIFEST, manifest_lines(records))
        version.reuse_if_same(MANIFEST)
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
        _write_bytes(stage / DATASET, (json.dumps(dataset, indent=2, sort_keys=True) + "\n").encode())
        version.reuse_if_same(DATASET)
        # Shards of an earlier, larger run are not carried over (they would be read as data); any file in the
        # folder that ganflow did not write is (hard-linked into the new version: never deleted).
        version.publish(ours=_ours)
    return dataset


def _ours(rel: str) -> bool:
    """The files of a dataset folder that ganflow curate writes (and the temp files of its earlier versions)."""
    folder, _, name = rel.rpartition("/")
    if folder == "":
        return name in (MANIFEST, DATASET, SHARDS) or name.startswith(".tmp-")
    return folder == SHARDS and (bool(_SHARD_NAME.fullmatch(name)) or name.startswith(".tmp-"))


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(out_dir: str, records: list[Record], pngs: dict[str, str], resolution: int,
                 shard_size: int, extra: dict | None = None) -> dict:
    return write_dataset(out_dir, records, {i: Path(p) for i, p in pngs.items()}, resolution, shard_size, extra)
