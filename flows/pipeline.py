"""The whole pipeline as one flow: curate a source into a dataset, then train on it (both as subflows)."""
from __future__ import annotations

from typing import Literal

from prefect import flow

from flows.curate import curate
from flows.train import train_flow


@flow(name="pipeline")
def pipeline(
    source: Literal["demo", "path", "hashtag"] = "demo",
    input_path: str | None = None,
    hashtag: str | None = None,
    out: str = "data/curated/demo",
    run_dir: str = "runs/demo",
    arch: Literal["stylegan2", "stylegan3-t", "stylegan3-r", "pggan"] | None = None,
    resolution: int | None = None,
    kimg: float | None = None,
    seed: int = 0,
    params: str = "params.yaml",
    device: str | None = None,
    curate_resolution: int | None = None,
    matte: Literal["auto", "rembg", "grabcut", "none"] | None = None,
    max_posts: int = 200,
    raw_root: str = "data/raw",
    cache_dir: str = "data/cache",
    resume_from: str | None = None,
    freeze_d: int | None = None,
) -> dict:
    """Curate a folder, an archive, a hashtag or the demo into a dataset, then train a GAN on it.

    Args:
        source: demo (built offline), path (a folder, .zip or .tar) or hashtag (Instagram, needs a session file
            on the worker: $GANFLOW_IG_SESSIONFILE and $GANFLOW_IG_USER).
        input_path: The folder or archive when source is path.
        hashtag: The hashtag without '#' when source is hashtag.
        out: Where the curated dataset goes (manifest.jsonl, shards/, dataset.json).
        run_dir: The training run folder (checkpoints/, samples/).
        arch: Network family: stylegan2 or stylegan3-t/-r (with ADA, in cycles), or pggan (one stage per resolution).
            Empty: train.arch, or resume_from's.
        resolution: Training resolution (a power of two, at most the curated resolution). Empty: train.resolution,
            or resume_from's.
        kimg: Total kimg to train. Empty: params.yaml's train section decides.
        seed: Seed for weights, data order and noise.
        params: Settings file (sections curate and train).
        device: auto, cpu, cuda or cuda:N. Empty: train.device.
        curate_resolution: Side of the curated images. Empty: curate.resolution (512).
        matte: Background removal for curation. Empty: curate.matte.
        max_posts: Instagram: posts to take from the hashtag.
        raw_root: Raw store root: inputs are copied once to a folder named after the source below it
            (RAW_ROOT/NAME/, e.g. data/raw/demo/).
        cache_dir: Per-image curation results, so reruns do no work twice.
        resume_from: Transfer learning: a network file to start from (.pt or NVIDIA .pkl); the run takes its
            architecture, so empty arch and resolution (given, they must agree). Empty: train.resume_from.
        freeze_d: Freeze-D: keep the pretrained discriminator's first N layers fixed. Empty: train.freeze_d.
    """
    dataset = curate(source=source, input_path=input_path, hashtag=hashtag, out=out, params_path=params,
                     resolution=curate_resolution, matte=matte, max_posts=max_posts, raw_root=raw_root,
                     cache_dir=cache_dir)
    trained = train_flow(data=dataset["out"], run_dir=run_dir, resolution=resolution, arch=arch, kimg=kimg,
                         seed=seed, params=params, device=device, resume_from=resume_from, freeze_d=freeze_d)
    return {"dataset": {k: dataset[k] for k in ("out", "count", "inputs", "content_hash")}, "train": trained}
