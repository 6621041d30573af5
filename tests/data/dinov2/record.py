"""Record what tests/test_dinov2.py checks ganflow's DINOv2 extractor against: Meta's own model (from a scratch
checkout of facebookresearch/dinov2, never a dependency) holding the same seeded random weights, fed the same
images through dgm-eval's DINOv2 transform. Not run by the tests.

    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2-ref      # or any scratch copy
    PYTHONPATH=. python tests/data/dinov2/record.py /tmp/dinov2-ref

Writes, next to this file: a/*.png (8 images, 32²) and b/*.png (8 images, 48²), reference.npz (the official model's
CLS features of a and b, float32) and record.json (seed, variant, a digest of the random weights, and
torch-fidelity's FD of the recorded features).
"""
from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

HERE = Path(__file__).resolve().parent
SEED, VARIANT = 0, "vits14"


def state_digest(state: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode() + state[k].numpy().tobytes())
    return h.hexdigest()


def write_images(folder: Path, n: int, side: int, seed: int) -> list[Path]:
    """Colour blobs on white with a little noise: the kind of image the curated datasets hold."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        yy, xx = np.mgrid[0:side, 0:side] / side
        cx, cy, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.15, 0.35)
        img = np.where(((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None], rng.integers(0, 256, 3), 255)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        files.append(folder / f"{i:02d}.png")
        Image.fromarray(img).save(files[-1])
    return files


def main(repo: str) -> None:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from tasks.evaluation.dinov2 import random_state_dict

    state = random_state_dict(VARIANT, SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # xFormers is not available
        model = torch.hub.load(repo, f"dinov2_{VARIANT}", source="local", pretrained=False)
    model.load_state_dict(state, strict=True)  # the random file has Meta's exact layout
    model.eval()
    # dgm-eval's DINOv2Encoder.transform (clean_resize=False)
    transform = T.Compose([T.Resize((224, 224), T.InterpolationMode.BICUBIC), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    feats = {}
    for name, side, seed in (("a", 32, 1), ("b", 48, 2)):
        files = write_images(HERE / name, 8, side, seed)
        x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
        with torch.no_grad():
            feats[name] = model(x).numpy().astype(np.float32)
    np.savez_compressed(HERE / "reference.npz", features_a=feats["a"], features_b=feats["b"])
    import subprocess

    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    stats = [fid_features_to_statistics(torch.from_numpy(feats[k])) for k in ("a", "b")]
    fd = fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    (HERE / "record.json").write_text(json.dumps({
        "seed": SEED, "variant": VARIANT, "state_sha256": state_digest(state),
        "dinov2_commit": commit, "fd_torch_fidelity": fd}, indent=2) + "\n")
    print(f"recorded {sum(len(v) for v in feats.values())} feature rows; torch-fidelity FD {fd:.6f}")


if __name__ == "__main__":
    main(sys.argv[1])
