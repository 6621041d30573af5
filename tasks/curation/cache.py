"""A content-addressed cache of per-image results, so a rerun does no work twice.

Keys are (stage, settings digest, image id): change a threshold and exactly the results that depend
on it are recomputed. Writes are atomic (temp file + rename), so a killed run leaves no torn entry.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


class StageCache:
    def __init__(self, root: str | Path, stage: str, digest: str, suffix: str = ".json"):
        self.dir = Path(root) / stage / digest
        self.suffix = suffix

    def path(self, image_id: str) -> Path:
        return self.dir / image_id[:2] / f"{image_id}{self.suffix}"

    def get_json(self, image_id: str) -> dict | None:
        p = self.path(image_id)
        try:
            return json.loads(p.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put_json(self, image_id: str, value: dict) -> None:
        self.put_bytes(image_id, json.dumps(value, sort_keys=True).encode())

    def has(self, image_id: str) -> bool:
        return self.path(image_id).exists()

    def put_bytes(self, image_id: str, data: bytes) -> Path:
        p = self.path(image_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
        return p
