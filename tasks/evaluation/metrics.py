"""FID and KID with torch-fidelity's InceptionV3 extractor, from a weights file on disk (never a download).

Pure functions; `ganflow fid`, `ganflow evaluate` and the evaluate flow call them.

- The weights file is read once into memory, hashed (and compared with a sha256 when one is given) and loaded
  from those bytes with torch.load(weights_only=True) as a plain state dict, which is put into torch-fidelity's
  extractor. torch-fidelity itself never sees the path (its own load is a full pickle load), so a file swapped
  after the check cannot run code: nothing reads the path a second time.
- A real-statistics cache that does not load (planted pickle, torn, another schema) is recomputed, with a warning.
- Statistics are float64 mean/covariance of the 2048-d pool features, computed as torch-fidelity does
  (np.cov, eigenvalues of sigma1·sigma2), so the numbers equal torch_fidelity.calculate_metrics'.
- Real-data statistics (and, for KID, the features) are cached on disk, keyed by the data's content hash,
  the weights' sha256 and the image count.
- Images are read and generated in batches; only the features (N x 2048 float32) are kept.
- FD-DINOv2 (tasks.evaluation.dinov2) is the same Fréchet distance in DINOv2 features; precision/recall (tasks.evaluation.audit) are
  computed in DINOv2 features when they are asked for, else in Inception's (as dgm-eval recommends).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tasks.common.settings import EvaluateSettings, declared
from tasks.evaluation.frechet import Stats, fid_from_stats, kid  # noqa: F401  (their home; used here and re-exported)
from tasks.evaluation.registry import selectable
from tasks.evaluation.weights_file import RANDOM, read_bytes, resolve_path, state_from_bytes

# The evaluate section's defaults, for callers that pass no settings (`ganflow fid`, notebooks): declared there once.
_BATCH = declared(EvaluateSettings, "batch")
_KID_SUBSETS = declared(EvaluateSettings, "kid_subsets")
_KID_SUBSET_SIZE = declared(EvaluateSettings, "kid_subset_size")

ENV_WEIGHTS = "GANFLOW_INCEPTION_WEIGHTS"
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF Inception
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
FEATURE = "2048"
SMALL_N = 2048  # below this many images FID is biased upwards (and the 2048-d covariance is rank-deficient)
IMAGE_EXT = ("png", "jpg", "jpeg")  # torch-fidelity's samples_find_ext
RANDOM_FILE = "inception-random-init.pt"
RANDOM_NOTE = "random-initialized InceptionV3 (evaluate.inception_weights: random): FIDs not comparable to published ones"


class InceptionWeightsError(FileNotFoundError):
    """No usable InceptionV3 weights file (missing, not a plain state dict, or the wrong hash)."""


# ------------------------------------------------------------------ weights
def resolve_weights(cli: str | None = None, configured: str | None = None, cache_dir: str | Path = "data/cache") -> Path:
    """The weights path: --inception-weights, else $GANFLOW_INCEPTION_WEIGHTS, else params evaluate.inception_weights.
    "random" gives a seeded random-initialized file in cache_dir (written once). Raises InceptionWeightsError
    saying which file to put where when none is set or the file is absent."""
    found = resolve_path(cli, configured, option="--inception-weights", env=ENV_WEIGHTS,
                         key="evaluate.inception_weights", random_path=Path(cache_dir) / RANDOM_FILE,
                         write_random=write_random_inception_weights, missing=_missing)
    if found is not None:
        return found
    raise InceptionWeightsError(
        f"FID/KID need torch-fidelity's InceptionV3 weights file {WEIGHTS_FILE} (download it elsewhere from "
        f"{WEIGHTS_URL}); nothing is downloaded here. Put it e.g. at models/weights/{WEIGHTS_FILE} and pass "
        f"--inception-weights PATH, set ${ENV_WEIGHTS}=PATH, or set evaluate.inception_weights in params.yaml "
        f"('{RANDOM}' gives a random-initialized extractor: a smoke run, not comparable FIDs)")


def _missing(where: str) -> InceptionWeightsError:
    return InceptionWeightsError(f"{where}: put torch-fidelity's InceptionV3 weights ({WEIGHTS_FILE}, from {WEIGHTS_URL}, "
                                 f"downloaded on a machine with internet) there")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class InceptionWeights:
    """A weights file read once: the bytes that were hashed are the bytes that get loaded."""

    path: Path
    sha256: str
    data: bytes = field(repr=False)


def read_weights(path: str | Path, sha256: str | None = None) -> InceptionWeights:
    """Read the weights file once into memory and hash those bytes; refuse it when `sha256` is given and differs."""
    data, digest = read_bytes(path, sha256, "InceptionV3 weights", InceptionWeightsError)
    return InceptionWeights(Path(path), digest, data)


def checked_state(weights: InceptionWeights) -> dict[str, torch.Tensor]:
    """The state dict in the bytes read, loaded with weights_only=True: a dict of tensors, or InceptionWeightsError."""
    return state_from_bytes(weights.data, weights.path, "InceptionV3", InceptionWeightsError)


def check_weights(path: str | Path, sha256: str | None = None) -> str:
    """Refuse a file that is not a plain tensor state dict (or has another sha256); returns its sha256."""
    weights = read_weights(path, sha256)
    checked_state(weights)
    return weights.sha256


@functools.lru_cache(maxsize=1)
def _extractor_class():
    """torch-fidelity's FeatureExtractorInceptionV3, built without its own weight loading: its __init__ unpickles
    the weights argument with weights_only=False, so it is handed an empty dict that we pickled in memory, and
    the checked state dict is loaded afterwards."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class CheckedInceptionV3(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):
            if state_dict:  # the empty placeholder loaded in __init__ is skipped
                return super().load_state_dict(state_dict, *args, **kwargs)

    return CheckedInceptionV3


def new_extractor():
    """An InceptionV3 extractor ('inception-v3-compat', 2048-d pool features) with its initial weights."""
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return _extractor_class()("inception-v3-compat", [FEATURE], feature_extractor_weights_path=empty)


def load_extractor(weights: str | Path | InceptionWeights, sha256: str | None = None, device: str = "cpu"):
    """torch-fidelity's FeatureExtractorInceptionV3 with the weights of `weights` (a path, read once here, or an
    InceptionWeights already read), checked as checked_state says. Returns (extractor, weights sha256)."""
    if not isinstance(weights, InceptionWeights):
        weights = read_weights(weights, sha256)
    elif sha256 and weights.sha256 != sha256.lower():
        raise InceptionWeightsError(f"{weights.path}: sha256 {weights.sha256} is not the expected {sha256}; "
                                    f"refusing to load it")
    state = checked_state(weights)
    extractor = new_extractor()
    try:
        extractor.load_state_dict(state)
    except RuntimeError as e:  # missing/unexpected keys or shape mismatches
        raise InceptionWeightsError(f"{weights.path} is not an InceptionV3 state dict of torch-fidelity's layout: "
                                    f"{str(e).splitlines()[0]}") from None
    return extractor.to(device), weights.sha256


def write_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """A state dict of torch-fidelity's InceptionV3 with random weights (He-normal convolutions, so features
    neither vanish nor explode through ~90 layers), for tests, benchmarks and the demo where the real file is
    absent. FIDs from it are NOT comparable to published ones. Built by constructing the extractor class itself
    with its weight loading skipped, so the keys and shapes are exactly the extractor's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = new_extractor()
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # concurrent writers each rename a whole file
    with open(tmp, "wb") as f:  # a file object, not a name: torch.save's bytes then never depend on the name
        torch.save(model.state_dict(), f)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------ image sources (uint8 NCHW batches)
def folder_files(folder: str | Path) -> list[Path]:
    """Image files of a folder, as torch-fidelity finds them (non-recursive, png/jpg/jpeg, sorted real paths)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    files = sorted(os.path.realpath(p) for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXT)
    if not files:
        raise FileNotFoundError(f"{folder} holds no .png/.jpg/.jpeg images")
    return [Path(f) for f in files]


def _to_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def folder_batches(folder: str | Path, batch: int = _BATCH, limit: int | None = None) -> Iterator[torch.Tensor]:
    files = folder_files(folder)[:limit]
    for i in range(0, len(files), batch):
        yield _to_batch([np.asarray(Image.open(f).convert("RGB")) for f in files[i:i + batch]])


def dataset_batches(data_dir: str | Path, batch: int = _BATCH, limit: int | None = None) -> Iterator[torch.Tensor]:
    """A curated dataset's images (dataset.json + tar shards), shard by shard, at their stored size; each shard
    checked against dataset.json's sha256 first (the statistics are cached under its content hash)."""
    from models.data import open_verified_shard, shard_entries

    data_dir = Path(data_dir)
    meta = json.loads((data_dir / "dataset.json").read_text())
    buf: list[np.ndarray] = []
    seen = 0
    for path, sha256, _count in shard_entries(data_dir, meta):
        with open_verified_shard(path, sha256) as f, tarfile.open(fileobj=f) as tf:
            for member in tf.getmembers():
                if not member.isfile() or not member.name.lower().endswith(".png"):
                    continue
                if limit is not None and seen >= limit:
                    break
                # mypy: isfile() above, so extractfile gives a stream
                buf.append(np.asarray(Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGB")))  # type: ignore[union-attr]
                seen += 1
                if len(buf) == batch:
                    yield _to_batch(buf)
                    buf = []
    if buf:
        yield _to_batch(buf)


def source_batches(path: str | Path, batch: int = _BATCH, limit: int | None = None) -> Iterator[torch.Tensor]:
    """A curated dataset (has dataset.json) or a plain folder of images."""
    if (Path(path) / "dataset.json").exists():
        return dataset_batches(path, batch, limit)
    return folder_batches(path, batch, limit)


def source_ids(path: str | Path, limit: int | None = None) -> list[str]:
    """The names of the images source_batches yields, in its order: a feature row's image (`shard/member.png` in a
    curated dataset, the file name in a folder)."""
    path = Path(path)
    if not (path / "dataset.json").exists():
        return [f.name for f in folder_files(path)[:limit]]
    ids = []
    for shard in json.loads((path / "dataset.json").read_text())["shards"]:
        with tarfile.open(path / shard["file"]) as tf:
            ids += [f"{shard['file']}/{m.name}" for m in tf.getmembers()
                    if m.isfile() and m.name.lower().endswith(".png")]
    return ids[:limit]


def read_source_image(path: str | Path, image_id: str) -> np.ndarray:
    """One image of a curated dataset or folder by its source_ids() name (the caller checks the name is listed)."""
    path = Path(path)
    if not (path / "dataset.json").exists():
        return np.asarray(Image.open(path / image_id).convert("RGB"))
    shard, member = image_id.split(".tar/", 1)
    with tarfile.open(path / f"{shard}.tar") as tf:
        # mypy: a listed image is a regular member, so extractfile gives a stream
        return np.asarray(Image.open(io.BytesIO(tf.extractfile(member).read())).convert("RGB"))  # type: ignore[union-attr]


def content_hash(path: str | Path, limit: int | None = None) -> str:
    """What a real-stats cache is keyed by: dataset.json's content hash, or a hash of the folder's files."""
    meta = Path(path) / "dataset.json"
    if meta.exists():
        data = json.loads(meta.read_text())
        if data.get("content_hash"):
            return data["content_hash"]
        return hashlib.sha256(meta.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in folder_files(path)[:limit]:
        h.update(f"{f.name} {sha256_file(f)}\n".encode())
    return h.hexdigest()


# ------------------------------------------------------------------ features and statistics
@torch.no_grad()
def extract_features(extractor, batches: Iterable[torch.Tensor], device: str = "cpu") -> np.ndarray:
    """2048-d float32 features of every image, batch by batch (only the features are kept)."""
    out = [extractor(b.to(device))[0].cpu().numpy() for b in batches]
    if not out:
        raise ValueError("no images to extract features from")
    return np.concatenate(out)


def small_n_warning(n: int) -> str | None:
    if n < SMALL_N:
        return (f"FID from {n} images is biased upwards (and noisy) below {SMALL_N} images: compare it only with "
                f"FIDs from the same N; published FIDs use 50,000")
    return None


# ------------------------------------------------------------------ cached real statistics
def _cache_file(cache_dir: Path, data_hash: str, weights_sha: str, n: int | None, feature: str = FEATURE) -> Path:
    key = hashlib.sha256(f"{data_hash} {weights_sha} {feature} {n or 'all'}".encode()).hexdigest()[:20]
    return cache_dir / f"real-stats-{key}.pt"


def read_stats_cache(cache: Path, dim: int | None = None) -> Stats | None:
    """A real-statistics cache file, loaded with weights_only=True and checked (mean [D], covariance [D, D], N,
    features [N, D] or none; D = `dim` when given, e.g. Inception's 2048). One that does not load or fit (planted
    pickle, torn, another schema) is None, with a warning naming it: the caller recomputes and rewrites it."""
    try:
        d = torch.load(cache, map_location="cpu", weights_only=True)
        n = int(d["n"])
        mu, sigma, feats = d["mu"], d["sigma"], d.get("features")
        dim = dim or (int(mu.shape[0]) if torch.is_tensor(mu) and mu.ndim == 1 else -1)
        if not (torch.is_tensor(mu) and torch.is_tensor(sigma) and tuple(mu.shape) == (dim,)
                and tuple(sigma.shape) == (dim, dim) and n >= 2
                and (feats is None or (torch.is_tensor(feats) and tuple(feats.shape) == (n, dim)))):
            raise ValueError("its entries do not have the shapes of these features' statistics")
        if not (torch.isfinite(mu).all() and torch.isfinite(sigma).all()):
            raise ValueError("it holds non-finite numbers")
    except Exception as e:  # the safe unpickler's refusal, a torn zip, a missing key: all mean "recompute"
        first = (str(e).splitlines() or [""])[0][:160]
        warnings.warn(f"real-statistics cache {cache} is unreadable ({type(e).__name__}: {first}); recomputing it",
                      stacklevel=3)
        return None
    return Stats(mu.double().numpy(), sigma.double().numpy(), n, feats.float().numpy() if feats is not None else None)


def real_stats(path: str | Path, extractor, weights_sha: str, cache_dir: str | Path | None = None,
               n: int | None = None, keep_features: bool = False, batch: int = _BATCH,
               device: str = "cpu", feature: str = FEATURE) -> tuple[Stats, bool]:
    """Statistics of real images (a curated dataset or a folder), from the cache when present.
    Returns (stats, came_from_cache). The cache holds mean, covariance, N and, when asked for, the features (KID,
    precision/recall, memorization). `feature` names the feature space (Inception's "2048", "dinov2-vits14", ...)."""
    cache = None
    if cache_dir is not None:
        cache = _cache_file(Path(cache_dir), content_hash(path, n), weights_sha, n, feature)
        if cache.exists():
            stats = read_stats_cache(cache, int(feature) if feature.isdigit() else None)
            if stats is not None and (not keep_features or stats.features is not None):
                return stats, True
    feats = extract_features(extractor, source_batches(path, batch, n), device)
    stats = Stats.of(feats, keep_features=True)
    if cache is not None:
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # Features (N x 2048 float32: 400 MB at 50k) only when KID needs them; a later KID run re-extracts.
            torch.save({"mu": torch.from_numpy(stats.mu), "sigma": torch.from_numpy(stats.sigma), "n": stats.n,
                        "features": torch.from_numpy(feats) if keep_features else None}, tmp)
            os.replace(tmp, cache)
        except OSError as e:  # a cache that cannot be written costs time next run, not this result
            tmp.unlink(missing_ok=True)
            warnings.warn(f"real-statistics cache {cache} not written ({e.strerror or type(e).__name__})",
                          stacklevel=2)
    if not keep_features:
        stats.features = None
    return stats, False


# ------------------------------------------------------------------ several feature spaces at once
METRICS = selectable()  # evaluate.metrics / --metrics: Fréchet distances in Inception and DINOv2 features


@dataclass
class FeatureSpace:
    metric: str        # the column its Fréchet distance fills: "fid" or "fd_dinov2"
    name: str          # what caches are keyed by: "2048" (Inception pool) or "dinov2-vits14", ...
    extractor: Callable[[torch.Tensor], tuple]  # uint8 NCHW → (features,)
    sha256: str        # of the weights file
    note: str | None = None  # set for random-initialized weights: values not comparable to published ones


def feature_spaces(metrics, inception_weights=None, dinov2_weights=None, inception_sha256: str | None = None,
                   dinov2_sha256: str | None = None, device: str = "cpu") -> list[FeatureSpace]:
    """The extractors `metrics` need, Inception's first (its weights a path or an InceptionWeights already read).
    Raises for an unknown metric or a missing weights file."""
    from tasks.evaluation import dinov2

    unknown = set(metrics) - set(METRICS)
    if unknown or not metrics:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}: choose among {list(METRICS)}" if unknown else
                         f"no metric asked for: choose among {list(METRICS)}")
    spaces = []
    if "fid" in metrics:
        if inception_weights is None:
            raise InceptionWeightsError("fid needs torch-fidelity's InceptionV3 weights (--inception-weights)")
        ex, digest = load_extractor(inception_weights, inception_sha256, device)
        path = inception_weights.path if isinstance(inception_weights, InceptionWeights) else inception_weights
        spaces.append(FeatureSpace("fid", FEATURE, ex, digest, RANDOM_NOTE if Path(path).name == RANDOM_FILE else None))
    if "fd_dinov2" in metrics:
        if dinov2_weights is None:
            raise dinov2.DinoV2WeightsError("fd_dinov2 needs a DINOv2 weights file (--dinov2-weights)")
        ex, digest = dinov2.load_extractor(dinov2_weights, dinov2_sha256, device)
        spaces.append(FeatureSpace("fd_dinov2", ex.name, ex, digest,
                                   dinov2.RANDOM_NOTE if Path(dinov2_weights).name == dinov2.RANDOM_FILE else None))
    return spaces


def audit_space(spaces: list[FeatureSpace]) -> FeatureSpace:
    """Where precision/recall and the memorization audit are measured: DINOv2 when asked for, else Inception."""
    return next((s for s in spaces if s.metric == "fd_dinov2"), spaces[0])


@torch.no_grad()
def extract_each(spaces: list[FeatureSpace], batches: Iterable[torch.Tensor], device: str = "cpu") -> dict[str, np.ndarray]:
    """{metric: features} of every image in every space; each batch is read (or generated) once."""
    out: dict[str, list] = {s.metric: [] for s in spaces}
    for b in batches:
        b = b.to(device)
        for s in spaces:
            out[s.metric].append(s.extractor(b)[0].cpu().numpy())
    if not any(out.values()):
        raise ValueError("no images to extract features from")
    return {k: np.concatenate(v) for k, v in out.items()}


def real_stats_each(path, spaces: list[FeatureSpace], cache_dir=None, n: int | None = None, with_kid: bool = False,
                    batch: int = _BATCH, device: str = "cpu") -> dict[str, tuple[Stats, bool]]:
    """real_stats in every space: the first space (KID) and the audit space keep their features."""
    audit = audit_space(spaces)
    return {s.metric: real_stats(path, s.extractor, s.sha256, cache_dir, n,
                                 keep_features=(with_kid and s is spaces[0]) or s is audit, batch=batch,
                                 device=device, feature=s.name)
            for s in spaces}


def scores(spaces: list[FeatureSpace], reals: dict[str, Stats], fakes: dict[str, np.ndarray], with_kid: bool,
           kid_subsets: int = _KID_SUBSETS, kid_subset_size: int = _KID_SUBSET_SIZE, real_radii: np.ndarray | None = None,
           memorization=None, probe: dict | None = None) -> dict:
    """The registered metrics (tasks.evaluation.registry: fid and/or fd_dinov2, KID in the first space,
    precision/recall in the audit space, the memorized fraction when `memorization` asks, the probe's losses),
    the image counts and the small-N note."""
    from tasks.evaluation import registry

    first, audit = spaces[0], audit_space(spaces)
    out = registry.compute(registry.Snapshot(spaces, reals, fakes, with_kid, kid_subsets, kid_subset_size,
                                             real_radii, memorization, probe))
    out["n_real"], out["n_fake"] = reals[first.metric].n, len(fakes[first.metric])
    out["audit_features"] = audit.name
    note = small_n_warning(min(out["n_real"], out["n_fake"]))
    if note:
        warnings.warn(note, stacklevel=2)
        out["warning"] = note
    return out


def fid_folders(a: str | Path, b: str | Path, weights: str | Path | None, with_kid: bool = False,
                cache_dir: str | Path | None = None, sha256: str | None = None, batch: int = _BATCH,
                kid_subsets: int = _KID_SUBSETS, kid_subset_size: int = _KID_SUBSET_SIZE, device: str = "cpu",
                metrics=("fid",), dinov2_weights: str | Path | None = None,
                dinov2_sha256: str | None = None) -> dict:
    """FID and/or FD-DINOv2 (and KID, precision/recall) between A (real: a curated dataset or a folder; its stats
    cached when cache_dir is set) and B (a folder). `extracted` says how many images of each side went through the
    extractors."""
    spaces = feature_spaces(metrics, weights, dinov2_weights, sha256, dinov2_sha256, device)
    reals = real_stats_each(a, spaces, cache_dir, with_kid=with_kid, batch=batch, device=device)
    fakes = extract_each(spaces, folder_batches(b, batch), device)
    out = scores(spaces, {k: v[0] for k, v in reals.items()}, fakes, with_kid, kid_subsets, kid_subset_size)
    out["extracted"] = {"a": max(0 if cached else st.n for st, cached in reals.values()),
                        "b": len(fakes[spaces[0].metric])}
    for s in spaces:
        out["weights_sha256" if s.metric == "fid" else "dinov2_sha256"] = s.sha256
    notes = [s.note for s in spaces if s.note]
    if notes:
        out["extractor"] = "; ".join(notes)
    return out
