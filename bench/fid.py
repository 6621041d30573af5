"""FID cost, in one run on the same images: feature extraction img/s of ganflow (tasks.evaluation.metrics) against
torch-fidelity's own extraction loop with the same extractor, and an evaluation with cached real statistics
against one without; then the same for FD-DINOv2: ganflow's DINOv2 extractor (tasks.evaluation.dinov2) against
torch-fidelity's FeatureExtractorDinoV2 loop holding the same network and weights (handed to it in place of its
torch.hub download).

Usage: python bench/fid.py [--images 32] [--side 64] [--inception-weights W] [--dinov2-weights W] [--device cpu]
                           [--out bench/results/fid.json]
Without weights files random-initialized extractors of the same architectures are used (the speed is the same;
the values are not comparable to published ones).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.evaluation.metrics import (extract_features, fid_folders, folder_batches, folder_files, load_extractor,
                           write_random_inception_weights)


def dinov2_rows(real: Path, fake: Path, weights: Path | None, tmp: Path, batch: int, repeats: int,
                device: str) -> dict:
    """ganflow's DINOv2 extraction against torch-fidelity's loop and extractor with the same network, and FD-DINOv2
    with cached real statistics against without."""
    from unittest import mock

    from torch_fidelity.datasets import ImagesPathDataset
    from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2
    from torch_fidelity.utils import get_featuresdict_from_dataset

    from tasks.evaluation import dinov2

    given = weights is not None
    weights = weights or dinov2.write_random_weights(tmp / "dinov2-random.pt")
    ours, _digest = dinov2.load_extractor(weights, device=device)
    # torch-fidelity 0.4.0 only builds DINOv2 through torch.hub: give it the very network ganflow runs
    with mock.patch("torch.hub.load", return_value=ours.model):
        ref = FeatureExtractorDinoV2(f"dinov2-vit-{ours.variant.name[3]}-14", ["dinov2"]).to(device)
    files = [str(f) for f in folder_files(real)]
    cuda = device.startswith("cuda")
    t_ours = t_ref = float("inf")
    for _ in range(repeats):  # interleaved, best of: the machine is shared
        t = time.perf_counter()
        f_ours = extract_features(ours, folder_batches(real, batch), device)
        t_ours = min(t_ours, time.perf_counter() - t)
        t = time.perf_counter()
        f_ref = get_featuresdict_from_dataset(ImagesPathDataset(files), ref, batch, cuda=cuda, save_cpu_ram=True,
                                              verbose=False)["dinov2"]
        t_ref = min(t_ref, time.perf_counter() - t)
    timed = {}
    for name in ("uncached", "cached"):
        t = time.perf_counter()
        timed[name] = fid_folders(real, fake, None, cache_dir=tmp / "cache-dinov2", batch=batch, device=device,
                                  metrics=("fd_dinov2",), dinov2_weights=weights)
        timed[name]["s"] = time.perf_counter() - t
    n = len(files)
    return {
        "variant": ours.variant.name, "weights": "given" if given else "random-initialized (FD not comparable)",
        "extract_img_per_s": {"ganflow": n / t_ours, "torch_fidelity": n / t_ref},
        "ganflow_vs_torch_fidelity": t_ref / t_ours,
        # not 0: torch-fidelity resizes to 224² TF1-bilinear on the tensor, ganflow PIL-bicubic as dgm-eval
        "features_rel_diff_vs_torch_fidelity": float(np.linalg.norm(f_ours - f_ref.numpy()) / np.linalg.norm(f_ours)),
        "evaluation_s": {"uncached_real_stats": timed["uncached"]["s"], "cached_real_stats": timed["cached"]["s"]},
        "extracted": {k: v["extracted"] for k, v in timed.items()},
        "fd_dinov2": {k: v["fd_dinov2"] for k, v in timed.items()},
        "precision_recall": [timed["cached"]["precision"], timed["cached"]["recall"]],
    }


def write_images(folder: Path, n: int, side: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        yy, xx = np.mgrid[0:side, 0:side] / side
        cx, cy, r = rng.uniform(0.3, 0.7, 3) * [1, 1, 0.5]
        img = np.where(((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None], rng.integers(0, 256, 3), 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--inception-weights")
    ap.add_argument("--dinov2-weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="bench/results/fid.json")
    a = ap.parse_args()
    from torch_fidelity.datasets import ImagesPathDataset
    from torch_fidelity.utils import get_featuresdict_from_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = a.inception_weights or write_random_inception_weights(tmp / "inception-random.pt")
        real, fake = write_images(tmp / "real", a.images, a.side, 0), write_images(tmp / "fake", a.images, a.side, 1)
        extractor, _ = load_extractor(weights)
        extractor(torch.zeros(1, 3, a.side, a.side, dtype=torch.uint8))  # warm-up
        t_ours = t_ref = float("inf")
        for _ in range(a.repeats):  # interleaved, best of: the machine is shared
            t = time.perf_counter()
            ours = extract_features(extractor, folder_batches(real, a.batch))
            t_ours = min(t_ours, time.perf_counter() - t)
            t = time.perf_counter()
            ref = get_featuresdict_from_dataset(ImagesPathDataset([str(f) for f in folder_files(real)]), extractor,
                                                a.batch, cuda=False, save_cpu_ram=True, verbose=False)["2048"]
            t_ref = min(t_ref, time.perf_counter() - t)
        t = time.perf_counter()
        first = fid_folders(real, fake, weights, cache_dir=tmp / "cache", batch=a.batch)
        t_uncached = time.perf_counter() - t
        t = time.perf_counter()
        second = fid_folders(real, fake, weights, cache_dir=tmp / "cache", batch=a.batch)
        t_cached = time.perf_counter() - t
        fd_dinov2 = dinov2_rows(real, fake, a.dinov2_weights and Path(a.dinov2_weights), tmp, a.batch, a.repeats,
                                a.device)
    result = {
        "images": a.images, "side": a.side, "batch": a.batch, "threads": torch.get_num_threads(), "repeats": a.repeats,
        "weights": "given" if a.inception_weights else "random-initialized (FID not comparable to published)",
        "extract_img_per_s": {"ganflow": a.images / t_ours, "torch_fidelity": a.images / t_ref},
        "features_max_abs_diff": float(np.abs(ours - ref.numpy()).max()),
        "evaluation_s": {"uncached_real_stats": t_uncached, "cached_real_stats": t_cached},
        "extracted": {"uncached": first["extracted"], "cached": second["extracted"]},
        "fid": {"uncached": first["fid"], "cached": second["fid"]},
        "fd_dinov2": fd_dinov2,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
