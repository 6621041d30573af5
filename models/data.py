"""Training data from a curated dataset (dataset.json + tar shards of PNGs), with a resumable sampler.

Images are decoded once, resized to the training resolution and kept in memory as uint8 (64² x 10k
images is 120 MB). The sampler is a pure function of (seed, epoch, index), so its position is two
integers that a checkpoint saves and restores exactly.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image


class DatasetError(ValueError):
    """The folder is not a curated dataset (no dataset.json or no images)."""


def shard_entries(data_dir: Path, meta) -> list[tuple[Path, str, int]]:
    """(path, sha256, count) of every shard dataset.json lists, each a file inside the dataset."""
    shards = meta.get("shards") if isinstance(meta, dict) else None
    if not isinstance(shards, list):
        raise DatasetError(f"{data_dir / 'dataset.json'} lists no shards: not a dataset ganflow curate wrote")
    out = []
    for s in shards:
        name = s.get("file") if isinstance(s, dict) else None
        sha, count = (s.get("sha256"), s.get("count")) if isinstance(s, dict) else (None, None)
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts or \
                not isinstance(sha, str) or not isinstance(count, int):
            raise DatasetError(f"{data_dir / 'dataset.json'} has a shard entry {str(s)[:80]!r} that is not a file "
                               "inside the dataset with its sha256 and count")
        out.append((data_dir / name, sha, count))
    return out


def open_verified_shard(path: Path, sha256: str):
    """The shard's file, open, after its bytes matched dataset.json's sha256 (hashed from the same descriptor
    that is then read, so what is checked is what is used). A shard replaced or cut short by an interrupted
    curate is a DatasetError naming it."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"{path} (listed in dataset.json) cannot be read ({e.strerror}): rerun `ganflow curate` "
                           "for this dataset") from None
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    if h.hexdigest() != sha256:
        f.close()
        raise DatasetError(f"{path} does not match the sha256 dataset.json records for it: the dataset was changed "
                           "or an interrupted curate left it half-written; rerun `ganflow curate` for this dataset")
    f.seek(0)
    return f


def load_images(data_dir: str | Path, resolution: int) -> torch.Tensor:
    """All images of a curated dataset as uint8 NCHW at `resolution` (Lanczos), in shard order. Each shard is
    checked against dataset.json (sha256, image count) before any of it is used."""
    data_dir = Path(data_dir)
    meta_path = data_dir / "dataset.json"
    if not meta_path.exists():
        raise DatasetError(f"{data_dir} has no dataset.json: run `ganflow curate --out {data_dir}` first")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{meta_path} is not readable JSON ({type(e).__name__})") from None
    images = []
    for path, sha, count in shard_entries(data_dir, meta):
        found = 0
        with open_verified_shard(path, sha) as f, tarfile.open(fileobj=f) as tf:
            for member in tf.getmembers():
                if not member.isfile() or not member.name.endswith(".png"):
                    continue
                img = Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGB")  # type: ignore[union-attr]  # isfile()
                if img.size != (resolution, resolution):
                    img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
                images.append(np.asarray(img))
                found += 1
        if found != count:
            raise DatasetError(f"{path} holds {found} images and dataset.json says {count}: rerun `ganflow curate`")
    if not images:
        raise DatasetError(f"{data_dir} holds no accepted images to train on")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


@dataclass
class SamplerState:
    epoch: int = 0
    index: int = 0


class ShuffledSampler:
    """Endless index stream: a fresh permutation per epoch, seeded by (seed, epoch)."""

    def __init__(self, n: int, seed: int, state: SamplerState | None = None):
        self.n, self.seed = n, seed
        self.state = state or SamplerState()
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)  # drawn on first use

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def take(self, count: int) -> torch.Tensor:
        out = []
        while count:
            perm = self._permutation(self.state.epoch)
            step = min(count, self.n - self.state.index)
            out.append(perm[self.state.index:self.state.index + step])
            self.state.index += step
            count -= step
            if self.state.index == self.n:
                self.state = SamplerState(self.state.epoch + 1, 0)
        return torch.cat(out)


def to_float(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] → float [-1,1], the range G produces."""
    return batch_u8.float().div_(127.5).sub_(1.0)


def random_xflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror half the batch at random (dataset augmentation, as the reference's --mirror)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None].to(images.device), images.flip(3), images)
