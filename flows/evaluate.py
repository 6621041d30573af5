"""The evaluate flow: FID/KID (FD-DINOv2, precision/recall, memorization) for every snapshot of a run not evaluated
yet, the best snapshot exported. The train flow runs it after each stage; `ganflow evaluate` is the command.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from tasks.evaluation.evaluate import evaluate_task, weights_or_reason
from tasks.common.settings import DEFAULT_PARAMS, EvaluateOverrides, EvaluateSettings, given, load
from tasks.training.results import EvaluationOutcome


@flow(name="evaluate")
def evaluate_flow(run_dir: str, data: str,
                  settings: EvaluateOverrides = EvaluateOverrides(),  # type: ignore[valid-type]  # from EvaluateSettings
                  params: str = str(DEFAULT_PARAMS), device: str = "cpu", skip_without_weights: bool = False) -> dict:
    """FID/KID (FD-DINOv2, precision/recall, memorization) per snapshot of a run (RUN/fid.csv, RUN/metrics.json)
    and RUN/best.pt.

    Args:
        run_dir: Run folder with checkpoints/ckpt-KIMG.pt.
        data: The curated dataset the run trained on (its real statistics are cached).
        settings: Evaluation settings for this run, each with its bounds; an empty one keeps params.yaml's value
            (section evaluate). inception_weights, dinov2_weights: weights files on the worker; given here they
            come before $GANFLOW_INCEPTION_WEIGHTS and $GANFLOW_DINOV2_WEIGHTS, which come before params.yaml's.
        params: Settings file; section `evaluate` holds every setting not given in settings.
        device: Torch device for generation and the extractor.
        skip_without_weights: Return {"skipped": reason} instead of failing when no weights file is configured.
    """
    logger = get_run_logger()
    named = given(settings)
    p = load(EvaluateSettings, params, **named)
    # Named here, a weights file wins over the environment's (as the CLI's --inception-weights does).
    weights, dinov2, reason = weights_or_reason(p, named.get("inception_weights"), named.get("dinov2_weights"))
    if reason:
        if skip_without_weights:
            logger.warning("evaluation skipped: %s", reason)
            return EvaluationOutcome.skipped(reason).to_dict()  # a flow's result: plain JSON data
        raise FileNotFoundError(reason)
    return evaluate_task(run_dir, data, str(weights) if weights else None, p, device=device,
                         dinov2_weights=str(dinov2) if dinov2 else None)


def evaluate_after_stage(run_dir: str, data: str, params: str, device: str) -> EvaluationOutcome:
    """The train flow's step after each stage: the evaluate subflow when the weights files evaluate.metrics need are
    configured ($GANFLOW_INCEPTION_WEIGHTS or evaluate.inception_weights; $GANFLOW_DINOV2_WEIGHTS or
    evaluate.dinov2_weights), else skipped with the reason logged. A failing evaluation is logged, not raised: the
    stage's training is done and `ganflow evaluate` can redo it."""
    logger = get_run_logger()
    weights, dinov2, reason = weights_or_reason(load(EvaluateSettings, params))
    if reason:
        logger.info("FID evaluation skipped: %s", reason.split(";")[0])
        return EvaluationOutcome.skipped(reason)
    try:
        chosen = {"inception_weights": str(weights) if weights else None, "dinov2_weights": str(dinov2) if dinov2 else None}
        return EvaluationOutcome.evaluated(evaluate_flow(run_dir, data, settings=chosen, params=params, device=device))
    except Exception as e:  # noqa: BLE001 - reported, and the training result stands
        logger.error("FID evaluation of %s failed: %s: %s", run_dir, type(e).__name__, e)
        return EvaluationOutcome.failed(f"{type(e).__name__}: {e}")
