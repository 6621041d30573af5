"""Near-duplicate removal by perceptual hash: keep the larger, sharper image of each group."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE


@dataclass(frozen=True)
class Candidate:
    id: str
    phash: str        # 16 hex digits
    pixels: int       # width * height of the source
    sharpness: float  # blur_var: higher is sharper


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def near_duplicates(cands: list[Candidate], max_distance: int) -> dict[str, tuple[str, int]]:
    """{dropped id: (kept id, distance)}. Greedy in quality order: larger, then sharper, then id.

    Each candidate is compared against the kept set only (vectorized XOR + popcount), so the cost is
    n x kept instead of n^2 for datasets that are mostly unique.
    """
    order = sorted(cands, key=lambda c: (-c.pixels, -c.sharpness, c.id))
    kept_ids: list[str] = []
    kept_hashes = np.empty(len(order), dtype=np.uint64)
    dropped: dict[str, tuple[str, int]] = {}
    for c in order:
        h = np.uint64(int(c.phash, 16))
        n = len(kept_ids)
        if n:
            dist = np.bitwise_count(kept_hashes[:n] ^ h)
            j = int(np.argmin(dist))
            if int(dist[j]) <= max_distance:
                dropped[c.id] = (kept_ids[j], int(dist[j]))
                continue
        kept_hashes[n] = h
        kept_ids.append(c.id)
    return dropped


@task(name="dedup", cache_policy=NO_CACHE)
def dedup_task(cands: list[Candidate], max_distance: int) -> dict[str, tuple[str, int]]:
    return near_duplicates(cands, max_distance)
