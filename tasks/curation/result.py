"""What the curate flow returns: the dataset it wrote, where its inputs came from, and its DVC version.

Typed here, turned into a plain dict only at the edge (the flow's return value) by to_dict(): out, raw_dir,
matte_note, then dataset.json's fields, then version (None when the run did not version the dataset).
A caller of the flow reads that dict back with from_dict().
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CurationResult:
    out: str                        # the dataset folder, absolute
    raw_dir: str                    # the raw store its inputs were read from
    matte_note: str                 # which background removal ran, and why (said to the user)
    dataset: dict[str, Any]         # dataset.json as written: count, inputs, resolution, content_hash, reasons,
                                    # shards, and what the flow added (matte, source)
    version: dict[str, Any] | None = None  # the DVC versioning record (md5, git_rev, pushed, ...), when asked

    @property
    def count(self) -> int:
        """Accepted images."""
        return self.dataset["count"]

    @property
    def inputs(self) -> int:
        """Inputs looked at (accepted + rejected)."""
        return self.dataset["inputs"]

    @property
    def resolution(self) -> int:
        return self.dataset["resolution"]

    @property
    def content_hash(self) -> str:
        return self.dataset["content_hash"]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.dataset["shards"]

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "raw_dir": self.raw_dir, "matte_note": self.matte_note, **self.dataset,
                "version": self.version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurationResult:
        own = ("out", "raw_dir", "matte_note", "version")
        return cls(out=d["out"], raw_dir=d["raw_dir"], matte_note=d["matte_note"],
                   dataset={k: v for k, v in d.items() if k not in own}, version=d.get("version"))
