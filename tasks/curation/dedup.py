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


def _near_pairs(hashes: np.ndarray, max_distance: int, masks: list[int], chunk: int = 1 << 16):
    """Every pair (i, j), j < i, of hashes within max_distance, with its distance, as three arrays.

    Band join: for each band and each flip mask, the images whose band value equals another's flipped value
    are found with a binary search over the sorted band values (vectorized over a chunk of images), and
    only those candidates are compared."""
    n = len(hashes)
    found_i, found_j, found_d = [], [], []
    for b in range(BANDS):
        vals = ((hashes >> np.uint64(BAND_BITS * b)) & np.uint64((1 << BAND_BITS) - 1)).astype(np.int64)
        order = np.argsort(vals, kind="stable")
        ranked = vals[order]
        for m in masks:
            for start in range(0, n, chunk):
                q = np.arange(start, min(n, start + chunk))
                probe = vals[q] ^ m
                lo = np.searchsorted(ranked, probe, "left")
                counts = np.searchsorted(ranked, probe, "right") - lo
                total = int(counts.sum())
                if not total:
                    continue
                i = np.repeat(q, counts)
                first = np.repeat(np.cumsum(counts) - counts, counts)
                j = order[np.repeat(lo, counts) + np.arange(total) - first]
                keep = j < i
                i, j = i[keep], j[keep]
                d = np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)
                near = d <= max_distance
                found_i.append(i[near]); found_j.append(j[near]); found_d.append(d[near])
    if not found_i:
        return (np.empty(0, np.int64),) * 3
    i, j, d = (np.concatenate(a) for a in (found_i, found_j, found_d))
    key = np.unique(i * n + j)  # a pair close in several bands is found once per band
    i, j = key // n, key % n
    return i, j, np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)


def near_duplicates(cands: list[Candidate], max_distance: int) -> dict[str, tuple[str, int]]:
    """{dropped id: (kept id, distance)}. Greedy in quality order: each image is dropped for the nearest
    image kept before it (ties: the one kept first) within max_distance, else kept.

    Multi-index hashing: two hashes within distance d agree to within d // 4 bits on at least one of the
    4 bands of 16 bits (pigeonhole), so a vectorized join on each band's value and its flips within that
    radius finds every pair in reach, and only those are compared; the greedy then walks the few near
    pairs. The decisions are exactly those of a scan of the kept set (`near_duplicates_scan`), at about
    n x (probes + n / 65536) vectorized comparisons instead of n x kept in Python.
    """
    masks = _flip_masks(max_distance // BANDS)
    if len(masks) * BANDS > MAX_PROBES:
        return near_duplicates_scan(cands, max_distance)
    order = _order(cands)
    hashes = np.array([int(c.phash, 16) for c in order], dtype=np.uint64)
    i, j, d = _near_pairs(hashes, max_distance, masks)
    # Per image, its earlier neighbours nearest first, then the earliest: the first one kept is its match.
    rank = np.lexsort((j, d, i))
    kept = np.ones(len(order), dtype=bool)
    dropped: dict[str, tuple[str, int]] = {}
    for ii, jj, dd in zip(i[rank].tolist(), j[rank].tolist(), d[rank].tolist()):
        if order[ii].id in dropped or not kept[jj]:
            continue
        kept[ii] = False
        dropped[order[ii].id] = (order[jj].id, dd)
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
