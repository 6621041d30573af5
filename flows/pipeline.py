"""The whole pipeline as one flow: curate a source into a dataset, then train on it (both as subflows)."""
from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.curate import curate
from flows.train import train_flow
from tasks.settings import CurateOverrides, TrainOverrides


@flow(name="pipeline")
def pipeline(
    source: Literal["demo", "path", "hashtag"] = "demo",
    input_path: str | None = None,
    hashtag: str | None = None,
    out: str = "data/curated/demo",
    run_dir: str = "runs/demo",
    settings: TrainOverrides = TrainOverrides(),  # type: ignore[valid-type]  # a model made from TrainSettings
    params: str = "params.yaml",
    curate_settings: CurateOverrides = CurateOverrides(),  # type: ignore[valid-type]  # from CurateSettings
    max_posts: int = 200,
    raw_root: str = "data/raw",
    cache_dir: str = "data/cache",
) -> dict:
    """Curate a folder, an archive, a hashtag or the demo into a dataset, then train a GAN on it.

    Args:
        source: demo (built offline), path (a folder, .zip or .tar) or hashtag (Instagram, needs a session file
            on the worker: $GANFLOW_IG_SESSIONFILE and $GANFLOW_IG_USER).
        input_path: The folder or archive when source is path.
        hashtag: The hashtag without '#' when source is hashtag.
        out: Where the curated dataset goes (manifest.jsonl, shards/, dataset.json).
        run_dir: The training run folder (checkpoints/, samples/).
        settings: Training settings for this run, each with its bounds; an empty one keeps params.yaml's value
            (section train). The training resolution is at most the curated resolution.
        params: Settings file (sections curate and train).
        curate_settings: Curation settings for this run, each with its bounds; an empty one keeps params.yaml's
            value (section curate), e.g. resolution (the curated images' side) and matte (background removal).
        max_posts: Instagram: posts to take from the hashtag.
        raw_root: Raw store root: inputs are copied once to a folder named after the source below it
            (RAW_ROOT/NAME/, e.g. data/raw/demo/).
        cache_dir: Per-image curation results, so reruns do no work twice.
    """
    dataset = curate(source=source, input_path=input_path, hashtag=hashtag, out=out, params_path=params,
                     settings=curate_settings, max_posts=max_posts, raw_root=raw_root,
                     cache_dir=cache_dir)
    trained = train_flow(data=dataset["out"], run_dir=run_dir, settings=settings, params=params)
    return {"dataset": {k: dataset[k] for k in ("out", "count", "inputs", "content_hash")}, "train": trained}
