"""The whole pipeline as one flow: curate a source into a dataset, then train on it (both as subflows)."""
from __future__ import annotations

from prefect import flow

from flows.curate import curate
from flows.train import train_flow
from tasks.curation.result import CurationResult
from tasks.common.settings import CurateOverrides, IngestOverrides, IngestSource, TrainOverrides


@flow(name="pipeline")
def pipeline(
    source: IngestSource = "demo",
    input_path: str | None = None,
    hashtag: str | None = None,
    out: str = "data/curated/demo",
    run_dir: str = "runs/demo",
    settings: TrainOverrides = TrainOverrides(),  # type: ignore[valid-type]  # a model made from TrainSettings
    params: str = "params.yaml",
    curate_settings: CurateOverrides = CurateOverrides(),  # type: ignore[valid-type]  # from CurateSettings
    ingest_settings: IngestOverrides = IngestOverrides(),  # type: ignore[valid-type]  # from IngestSettings
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
        params: Settings file (sections curate and train; ingest for a hashtag).
        curate_settings: Curation settings for this run, each with its bounds; an empty one keeps params.yaml's
            value (section curate), e.g. resolution (the curated images' side) and matte (background removal).
        ingest_settings: Ingest settings for this run (max_posts: posts to take from the hashtag); an empty one
            keeps params.yaml's value (section ingest).
        raw_root: Raw store root: inputs are copied once to a folder named after the source below it
            (RAW_ROOT/NAME/, e.g. data/raw/demo/).
        cache_dir: Per-image curation results, so reruns do no work twice.
    """
    curated = CurationResult.from_dict(curate(source=source, input_path=input_path, hashtag=hashtag, out=out,
                                              params_path=params, settings=curate_settings,
                                              ingest_settings=ingest_settings, raw_root=raw_root, cache_dir=cache_dir))
    trained = train_flow(data=curated.out, run_dir=run_dir, settings=settings, params=params)
    dataset = {"out": curated.out, "count": curated.count, "inputs": curated.inputs,
               "content_hash": curated.content_hash}
    return {"dataset": dataset, "train": trained}
