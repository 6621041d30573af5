"""The raw store: data/raw/<name>/ holds each source's files by content hash, plus provenance.jsonl.

Files are written once, named by the sha256 of their bytes, and never modified afterwards. Every input
(a file in a folder, an archive member, an Instagram image) gets one provenance record, so identical
bytes under two names are two inputs that share one file.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

PROVENANCE = "provenance.jsonl"
FILES = "files"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)  # slots: one per input, held by the flow for the whole run
class RawItem:
    id: str                      # sha256 of the source bytes
    source: str                  # kind of source: folder, zip, tar, instagram, demo
    source_name: str             # name the input had at its source (sanitized)
    file: str                    # path of the bytes, relative to the raw dir
    size: int                    # bytes
    extra: dict = field(default_factory=dict)  # provenance beyond the name (e.g. shortcode, date, url)
    reason: str | None = None    # set when the input could not be stored (link, encrypted, bomb, ...): no file
    detail: str | None = None    # what went wrong, for the manifest


def rejected_item(source: str, source_name: str, reason: str, detail: str) -> RawItem:
    """The record of an input whose bytes were not stored. Its id is the sha256 of its source and name
    (there are no bytes to hash): stable across runs, and never equal to a stored file's id."""
    clean = sanitize_name(source_name)
    sha = hashlib.sha256(f"ganflow-unstored\0{source}\0{clean}".encode()).hexdigest()
    return RawItem(id=sha, source=source, source_name=clean, file="", size=0, reason=reason, detail=detail[:200])


def sanitize_name(name: str, max_len: int = 200) -> str:
    """A display-safe name: NFC, no control characters or path tricks, bounded length.

    Names from the internet (archive members, captions) are never used as paths here: files are
    stored by hash. This keeps them safe to print, log and put in JSON.
    """
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".", "..")]
    name = "/".join(parts).strip()
    if len(name) > max_len:
        name = name[: max_len // 2] + "…" + name[-(max_len // 2 - 1):]
    return name or "unnamed"


def _suffix(name: str) -> str:
    """A short lowercase extension kept for humans browsing the store; the content decides the format."""
    ext = os.path.splitext(name)[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".bin"


def store_stream(raw_dir: Path, stream: BinaryIO, source: str, source_name: str,
                 extra: dict | None = None) -> RawItem:
    """Copy a stream into the store while hashing it (never all in memory); skip the write if present."""
    files = raw_dir / FILES
    files.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=files, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        clean = sanitize_name(source_name)
        rel = f"{FILES}/{sha}{_suffix(clean)}"
        if (raw_dir / rel).exists():
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o444)  # raw data is read-only from here on
            os.replace(tmp, raw_dir / rel)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return RawItem(id=sha, source=source, source_name=clean, file=rel, size=size, extra=dict(extra or {}))


def write_provenance(raw_dir: Path, items: Iterable[RawItem]) -> Path:
    """Write provenance.jsonl atomically, one record per input, in a stable order."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    # reason/detail only where set: stores written before they existed keep their exact bytes.
    rows = sorted(({k: v for k, v in asdict(i).items() if v is not None or k not in ("reason", "detail")}
                   for i in items), key=lambda r: (r["source_name"], r["id"]))
    path = raw_dir / PROVENANCE
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_provenance(raw_dir: Path) -> list[RawItem]:
    path = Path(raw_dir) / PROVENANCE
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [RawItem(**json.loads(line)) for line in f if line.strip()]
