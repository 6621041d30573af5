"""Turning stage results into one manifest record per input: nothing is dropped, nothing is guessed."""
from __future__ import annotations

from tasks.curation.dedup import Candidate
from tasks.curation.publish import Record
from tasks.ingestion.sources.raw import RawItem


def split_exact_copies(inputs: list[RawItem]) -> tuple[list[RawItem], dict[int, RawItem]]:
    """First input of each content hash (by name), and {index of a copy: the input it copies}.

    Inputs refused at ingest (no stored bytes) are neither: they are not screened at all.
    """
    order = sorted(range(len(inputs)), key=lambda i: (inputs[i].source_name, inputs[i].id))
    first: dict[str, RawItem] = {}
    copies: dict[int, RawItem] = {}
    for i in order:
        item = inputs[i]
        if item.reason:
            continue
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
    """One record per input. Stage order decides the reason: ingest, decode/cheap, duplicate, content.

    `duplicate_of` is always the kept image's id (for an exact copy that is its own id too) and
    `duplicate_of_name` the kept input's name.
    """
    _, copies = split_exact_copies(inputs)
    names = {}
    for item in sorted(inputs, key=lambda x: (x.source_name, x.id), reverse=True):
        names[item.id] = item.source_name  # the first name of each id, as split_exact_copies keeps it
    records = []
    for i, item in enumerate(inputs):
        if item.reason:  # refused at ingest: no bytes were stored, nothing to screen
            records.append(Record(id=item.id, source=item.source, source_name=item.source_name, status="rejected",
                                  reason=item.reason, scores={"error": item.detail or item.reason}))
            continue
        scores = dict(cheap[item.id]["scores"])
        if i in copies:
            scores.update(duplicate_of=copies[i].id, duplicate_of_name=copies[i].source_name)
            reason = "duplicate"
        elif cheap[item.id]["reason"]:
            reason = cheap[item.id]["reason"]
        elif item.id in near_dups:
            kept, dist = near_dups[item.id]
            scores.update(duplicate_of=kept, duplicate_of_name=names.get(kept), phash_distance=dist)
            reason = "duplicate"
        else:
            scores.update(content[item.id]["scores"])
            reason = content[item.id]["reason"]
        records.append(Record(id=item.id, source=item.source, source_name=item.source_name,
                              status="rejected" if reason else "accepted", reason=reason, scores=scores))
    return records
