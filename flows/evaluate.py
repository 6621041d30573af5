"""The evaluate flow: FID/KID (FD-DINOv2, precision/recall, memorization) for every snapshot of a run not evaluated
yet, the best snapshot exported. The train flow runs it after each stage; `ganflow evaluate` is the command.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.evaluation.evaluate import evaluate_task, weights_or_reason
from tasks.settings import EvaluateSettings, load


@flow(name="evaluate")
def evaluate_flow(run_dir: str, data: str, inception_weights: str | None = None, params: str = "params.yaml",
                  n_fake: int | None = None, device: str = "cpu", skip_without_weights: bool = False,
                  dinov2_weights: str | None = None) -> dict:
    """FID/KID (FD-DINOv2, precision/recall, memorization) per snapshot of a run (RUN/fid.csv, RUN/metrics.json)
    and RUN/best.pt.

    Args:
        run_dir: Run folder with checkpoints/ckpt-KIMG.pt.
        data: The curated dataset the run trained on (its real statistics are cached).
        inception_weights: torch-fidelity's InceptionV3 weights file. Empty: $GANFLOW_INCEPTION_WEIGHTS, then
            params.yaml evaluate.inception_weights.
        params: Settings file; section `evaluate` holds N, KID settings, cache folder and divergence thresholds.
        n_fake: Generated images per snapshot. Empty: evaluate.n_fake.
        device: Torch device for generation and the extractor.
        skip_without_weights: Return {"skipped": reason} instead of failing when no weights file is configured.
        dinov2_weights: Meta's dinov2_vit{s,b,l}14_pretrain.pth, for evaluate.metrics with fd_dinov2. Empty:
            $GANFLOW_DINOV2_WEIGHTS, then params.yaml evaluate.dinov2_weights.
    """
    logger = get_run_logger()
    p = load(EvaluateSettings, params, n_fake=n_fake or None)
    weights, dinov2, reason = weights_or_reason(p, inception_weights, dinov2_weights)
    if reason:
        if skip_without_weights:
            logger.warning("evaluation skipped: %s", reason)
            return {"skipped": reason}
        raise FileNotFoundError(reason)
    return evaluate_task(run_dir, data, str(weights) if weights else None, p, device=device,
                         dinov2_weights=str(dinov2) if dinov2 else None)


def evaluate_after_stage(run_dir: str, data: str, params: str, device: str) -> dict:
    """The train flow's step after each stage: the evaluate subflow when the weights files evaluate.metrics need are
    configured ($GANFLOW_INCEPTION_WEIGHTS or evaluate.inception_weights; $GANFLOW_DINOV2_WEIGHTS or
    evaluate.dinov2_weights), else skipped with the reason logged. A failing evaluation is logged, not raised: the
    stage's training is done and `ganflow evaluate` can redo it."""
    logger = get_run_logger()
    weights, dinov2, reason = weights_or_reason(load(EvaluateSettings, params))
    if reason:
        logger.info("FID evaluation skipped: %s", reason.split(";")[0])
        return {"skipped": reason}
    try:
        return evaluate_flow(run_dir, data, str(weights) if weights else None, params, device=device,
                             dinov2_weights=str(dinov2) if dinov2 else None)
    except Exception as e:  # noqa: BLE001 - reported, and the training result stands
        logger.error("FID evaluation of %s failed: %s: %s", run_dir, type(e).__name__, e)
        return {"failed": f"{type(e).__name__}: {e}"}
