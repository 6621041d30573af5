"""What a flow run says it is, whatever started it (the CLI, a deployment, the manager, the pipeline): ganflow's tags,
a name made of what it trains, and the dataset it read or wrote.

A dataset is named by its content hash (dataset.json's content_hash), never by its path: the curate run that
wrote a dataset and every train run that read it carry the same tag `dataset:<first 12 hex digits>`, so the UI's
tag filter shows them together, and the train run's dataset artifact links the curate run found by that tag.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable
from uuid import UUID

GANFLOW = "ganflow"
DATASET_TAG = "dataset:"


def dataset_tag(content_hash: str) -> str:
    return f"{DATASET_TAG}{content_hash[:12]}"


def slug(text: str) -> str:
    """Lowercase letters, digits and dashes: 'My Sneakers_v2' → 'my-sneakers-v2'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "data"


def train_run_name(data: str | Path, arch: str, resolution: int, content_hash: str) -> str:
    """e.g. train-sneakers-sg3t-256-a1b2: the dataset folder, the family (stylegan → sg), the resolution and the
    dataset's content hash, so two runs on same-named folders of other data differ."""
    family = arch.replace("stylegan", "sg").replace("-", "")
    return "-".join(p for p in ("train", slug(Path(data).resolve().name)[:40], family, str(resolution),
                                content_hash[:4]) if p)


def label_this_run(tags: Iterable[str], name: str | None = None) -> str | None:
    """Add tags to the running flow run (and rename it); returns its id, None outside a flow run."""
    from prefect import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    run_id = UUID(str(flow_run.id))
    with get_client(sync_client=True) as client:
        have = client.read_flow_run(run_id).tags
        client.update_flow_run(run_id, tags=[*have, *(t for t in tags if t not in have)], name=name)
    return str(run_id)


def curate_run_of(content_hash: str) -> tuple[str, str] | None:
    """(id, name) of the newest curate flow run that wrote the dataset with this content hash, if the API knows it."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(
            all_=[GANFLOW, "curate", dataset_tag(content_hash)])), sort=FlowRunSort.START_TIME_DESC, limit=1)
    return (str(runs[0].id), runs[0].name) if runs else None
