"""Near-duplicate removal by perceptual hash: keep the larger, sharper image of each group."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

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


BANDS = 4          # the 64-bit hash as 4 bands of 16 bits, for the neighbourhood index
BAND_BITS = 16
MAX_PROBES = 2048  # above this many index probes per image (max_distance >= 16), scanning the kept set is cheaper


def _order(cands: list[Candidate]) -> list[Candidate]:
    """Quality order, best first: larger, then sharper, then id."""
    return sorted(cands, key=lambda c: (-c.pixels, -c.sharpness, c.id))


def _flip_masks(radius: int) -> list[int]:
    """Every 16-bit mask with at most `radius` bits set: the band values within `radius` of a band."""
    return [sum(1 << b for b in bits) for r in range(radius + 1) for bits in combinations(range(BAND_BITS), r)]


def near_duplicates(cands: list[Candidate], max_distance: int) -> dict[str, tuple[str, int]]:
    """{dropped id: (kept id, distance)}. Greedy in quality order: each image is dropped for the nearest
    image kept before it (ties: the one kept first) within max_distance, else kept.

    The kept images are indexed by band (multi-index hashing): two hashes within distance d agree to within
    d // 4 bits on at least one of the 4 bands (pigeonhole), so probing each band's value and its flips
    within that radius finds every kept image in reach, and only those are compared. The cost is about
    n x (probes + bucket sizes) instead of n x kept; the decisions are exactly those of a scan of the
    kept set (`near_duplicates_scan`).
    """
    radius = max_distance // BANDS
    masks = _flip_masks(radius)
    if len(masks) * BANDS > MAX_PROBES:
        return near_duplicates_scan(cands, max_distance)
    index: dict[int, list[int]] = {}  # (band number << 16 | band value) -> positions in the kept list
    kept_ids: list[str] = []
    kept_hashes: list[int] = []
    dropped: dict[str, tuple[str, int]] = {}
    band = (1 << BAND_BITS) - 1
    for c in _order(cands):
        h = int(c.phash, 16)
        keys = [(b << BAND_BITS) | ((h >> (BAND_BITS * b)) & band) for b in range(BANDS)]
        best: tuple[int, int] | None = None  # (distance, kept position)
        for key in keys:
            for m in masks:
                for j in index.get(key ^ m, ()):
                    d = (kept_hashes[j] ^ h).bit_count()
                    if d <= max_distance and (best is None or (d, j) < best):
                        best = (d, j)
        if best is not None:
            dropped[c.id] = (kept_ids[best[1]], best[0])
            continue
        for key in keys:
            index.setdefault(key, []).append(len(kept_ids))
        kept_ids.append(c.id)
        kept_hashes.append(h)
    return dropped


def near_duplicates_scan(cands: list[Candidate], max_distance: int) -> dict[str, tuple[str, int]]:
    """The same decisions by comparing each candidate with the whole kept set (vectorized XOR + popcount):
    n x kept, quadratic for mostly unique data. For large radii, and the reference in tests."""
    order = _order(cands)
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
