"""Turning stage results into one manifest record per input: nothing is dropped, nothing is guessed."""
from __future__ import annotations

from tasks.dedup import Candidate
from tasks.publish import Record
from tasks.sources.raw import RawItem


def split_exact_copies(inputs: list[RawItem]) -> tuple[list[RawItem], dict[int, RawItem]]:
    """First input of each content hash (by name), and {index of a copy: the input it copies}."""
    order = sorted(range(len(inputs)), key=lambda i: (inputs[i].source_name, inputs[i].id))
    first: dict[str, RawItem] = {}
    copies: dict[int, RawItem] = {}
    for i in order:
        item = inputs[i]
        if item.id in first:
            copies[i] = first[item.id]
        else:
            first[item.id] = item
    return list(first.values()), copies


def dedup_candidates(cheap: dict[str, dict]) -> list[Candidate]:
    return [
        Candidate(id=i, phash=r["scores"]["phash"], pixels=r["scores"]["width"] * r["scores"]["height"],
                  sharpness=r["scores"]["blur_var"])
        for i, r in sorted(cheap.items()) if r["reason"] is None
    ]


def assemble(inputs: list[RawItem], cheap: dict[str, dict], near_dups: dict[str, tuple[str, int]],
             content: dict[str, dict]) -> list[Record]:
    """One record per input. Stage order decides the reason: decode/cheap, duplicate, content."""
    _, copies = split_exact_copies(inputs)
    records = []
    for i, item in enumerate(inputs):
        scores = dict(cheap[item.id]["scores"])
        if i in copies:
            scores["duplicate_of"] = copies[i].source_name
            reason = "duplicate"
        elif cheap[item.id]["reason"]:
            reason = cheap[item.id]["reason"]
        elif item.id in near_dups:
            kept, dist = near_dups[item.id]
            scores.update(duplicate_of=kept, phash_distance=dist)
            reason = "duplicate"
        else:
            scores.update(content[item.id]["scores"])
            reason = content[item.id]["reason"]
        records.append(Record(id=item.id, source=item.source, source_name=item.source_name,
                              status="rejected" if reason else "accepted", reason=reason, scores=scores))
    return records
