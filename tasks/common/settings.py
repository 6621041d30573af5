"""Typed settings, one pydantic model per params.yaml section: every setting declared once, here.

A field gives a setting's type, its bounds (Field ge/gt/le/lt, Literal choices or a named rule) and a one-line
description; params.yaml gives its value (tests/test_settings.py keeps the two in step). The CLI's options
(flows/cli/options.py) and the train, curate and evaluate flows' UI forms (`TrainOverrides`, `CurateOverrides`,
`EvaluateOverrides`) are generated from these fields, so a new setting is one line below plus its value in
params.yaml.

`load(TrainSettings, "params.yaml", kimg=5)` reads one section, applies overrides (None = keep the file's
value) and validates; any bad value is a ParamsError of one line naming the key, the value and the bound.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import types
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args

import yaml
from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      create_model, model_validator)
from pydantic.fields import FieldInfo

from models.train_config import ArchName, TrainConfig


DEFAULT_PARAMS = Path("params.yaml")
# Above this side a dataset is not a GAN dataset but a typo (`--resolution 100000` would ask for 30 GB per image).
MAX_RESOLUTION = 4096
MAX_SEED = 2 ** 32 - 1      # numpy's RandomState takes seeds up to 2**32 - 1
# Bounds that keep every run finite: a kimg interval is at least one image (a snapshot or cycle that rounds to zero
# images never advances), a run at most 10^6 kimg (40 times StyleGAN3's longest) in at most 10^4 stage tasks.
MIN_KIMG, MAX_KIMG, MAX_STAGES = 0.001, 1e6, 10_000
MAX_COUNT = 1_000_000       # any other count (images per batch or shard, posts, boxes): far above a real value
# A params file is read only when it is small, and its YAML only when its aliases expand to few nodes and it nests
# shallowly ("billion laughs", a list nested thousands deep): checked on the parser's events, before any object is built.
MAX_PARAMS_BYTES, MAX_YAML_NODES, MAX_YAML_DEPTH, MAX_YAML_SCALAR = 1 << 20, 100_000, 64, 4096

Arch = ArchName  # models.train_config's list of the architectures models.arch builds
ARCHS: tuple[str, ...] = get_args(Arch)
# Where a setting left empty (None) gets "the family's" value: one table, which the run's log quotes.
FAMILY_DEFAULTS = "the family's (models/arch.py FAMILY_DEFAULTS; the run's log shows the value)"
# Where ingest takes images from: the embedded demo, a folder/.zip/.tar, or an Instagram hashtag.
IngestSource = Literal["demo", "path", "hashtag"]


class ParamsError(ValueError):
    """params.yaml is missing or unreadable, or a setting in it (or an override) is not valid."""


# ------------------------------------------------------------------------------------------- named rules
# A rule is a check whose message is the bound ("a power of two from 4 to 1024"); pydantic reports its
# ValueError as is, and `rule()` below reads it back from the field for the CLI's and the file's messages.

class Rule:
    """`text` may be a function: a bound read when it is shown (evaluate.metrics names the evaluation registry's
    metrics, and one registered later counts). `prepare` turns the given value into the field's first."""

    def __init__(self, text: str | Callable[[], str], check, prepare: Callable[[Any], Any] | None = None) -> None:
        self._text, self.check, self.prepare = text, check, prepare

    @property
    def text(self) -> str:
        return self._text if isinstance(self._text, str) else self._text()

    def __call__(self, value):
        if self.prepare is not None:
            value = self.prepare(value)
        if not self.check(value):
            raise ValueError(f"is not {self.text}")
        return value


def _power_of_two(lo: int, hi: int) -> Any:
    return AfterValidator(Rule(f"a power of two from {lo} to {hi}", lambda v: lo <= v <= hi and not v & (v - 1)))


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# The device rule, once: train.device's check, and the CLI's (flows/cli/validate.py) read it from here.
DEVICE = Rule("a device: auto, cpu, cuda, cuda:N or mps", lambda v: isinstance(v, str) and bool(_DEVICE.match(v)))
Device = Annotated[str, AfterValidator(DEVICE)]
# A hashtag's rule, once: the ingest settings check it before any work, and the Instagram source (validate_tag) too.
HASHTAG_NAME = re.compile(r"#?[A-Za-z0-9_]{1,100}")
Hashtag = Annotated[str, AfterValidator(Rule("1 to 100 ASCII letters, digits or '_' (a leading '#' allowed)",
                                             lambda v: v == "" or bool(HASHTAG_NAME.fullmatch(v))))]
DaskAddress = Annotated[str, AfterValidator(Rule("a scheduler address like tcp://host:8786 (or empty)",
                                                 lambda v: not any(ch.isspace() for ch in v)))]


# The names are the evaluation registry's, read when checked or shown (a metric registered later counts). Imported
# there: the registry imports no torch, and loading settings (the curate stage does) does not load it.
def _selectable() -> tuple[str, ...]:
    from tasks.evaluation.registry import selectable

    return selectable()


Metrics = Annotated[tuple[str, ...], BeforeValidator(Rule(
    lambda: f"a list of one or more of {', '.join(_selectable())}",
    lambda v: isinstance(v, tuple) and bool(v) and set(v) <= set(_selectable()),
    prepare=lambda v: (v,) if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple)) else v))]


def setting(default: Any, description: str, **bounds: Any) -> Any:
    """One setting: its default (params.yaml is rendered from it: render_params), a one-line description, and its
    bounds."""
    return Field(default, description=description, **bounds)


_LIBRARY = TrainConfig()


def trainer_setting(name: str, description: str, **bounds: Any) -> Any:
    """A training setting the trainer takes by the same name: its default is the library's
    (models.train_config.TrainConfig), written there once."""
    return setting(getattr(_LIBRARY, name), description, **bounds)


# ------------------------------------------------------------------------------------------- base

class Section(BaseModel):
    """One params.yaml section. Frozen: a run's settings never change under it; `updated()` makes a copy."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True)
    section: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _empty_is_empty_string(cls, data: Any) -> Any:
        # YAML's `key:` with no value is None; for a text setting that means "" (as `key: ""`).
        if isinstance(data, dict):
            return {k: ("" if v is None and k in cls.model_fields and cls.model_fields[k].annotation is str else v)
                    for k, v in data.items()}
        return data

    def updated(self, **changes: Any):
        """A validated copy with some settings changed (None = keep)."""
        return _validate(type(self), {**self.model_dump(), **{k: v for k, v in changes.items() if v is not None}})


S = TypeVar("S", bound=Section)


# ------------------------------------------------------------------------------------------- sections

class IngestSettings(Section):
    section: ClassVar[str] = "ingest"

    source: IngestSource = setting("demo", "what the DVC pipeline's ingest stage copies into data/raw/pipeline: "
                                           "demo, path or hashtag")
    input: str = setting("", "path: a folder, .zip or .tar (DVC does not watch it: `dvc repro -f -s ingest` after "
                             "it changes)")
    hashtag: Hashtag = setting("", "hashtag: without '#'; needs $GANFLOW_IG_SESSIONFILE and $GANFLOW_IG_USER")
    max_posts: int = setting(200, "hashtag: posts to take", ge=1, le=MAX_COUNT)

    @model_validator(mode="after")
    def _source_named(self) -> "IngestSettings":
        if self.source == "path" and not self.input:
            raise ValueError("ingest.source is path: set ingest.input to a folder, a .zip or a .tar")
        if self.source == "hashtag" and not self.hashtag:
            raise ValueError("ingest.source is hashtag: set ingest.hashtag")
        return self


class CurateSettings(Section):
    section: ClassVar[str] = "curate"

    resolution: int = setting(512, "side of the square output images", ge=8, le=MAX_RESOLUTION)
    batch_size: int = setting(64, "images per mapped Prefect task (never one task per image)", ge=1, le=MAX_COUNT)
    workers: int = setting(0, "processes for CPU work inside a batch; 0 = all cores", ge=0, le=4096)
    min_side_fraction: float = setting(0.8, "too_small: min side < fraction x resolution (above 1: only images "
                                            "larger than the output)", ge=0, le=64)
    blur_size: int = setting(256, "blurry: Laplacian variance measured on this fixed-size downscale (short side)",
                             ge=1, le=MAX_RESOLUTION)
    blur_min_var: float = setting(60.0, "blurry below this variance", ge=0, le=1e9)
    gray_max_chroma: float = setting(12.0, "grayscale: 99th percentile of per-pixel max channel difference below "
                                           "this", ge=0, le=255)
    face_mode: Literal["reject", "crop"] = setting("reject", "reject, or crop (to the largest face, for face "
                                                             "datasets)")
    face_min_fraction: float = setting(0.08, "faces smaller than this fraction of the short side are ignored",
                                       ge=0, le=1)
    face_min_neighbors: int = setting(8, "Haar cascade minNeighbors (6 found faces in 7 of 24 cloud textures, 8 in 3)",
                                      ge=0, le=1000)
    text_min_confidence: float = setting(0.6, "recognition confidence under which a detected text box is dropped",
                                         ge=0, le=1)
    text_min_chars: int = setting(2, "boxes reading fewer letters/digits are shapes, not text", ge=0, le=1000)
    text_max_area: float = setting(0.02, "text: reject when text boxes cover more than this fraction of the image",
                                   ge=0, le=1)
    text_max_boxes: int = setting(3, "text: or when there are more confident boxes than this", ge=0, le=MAX_COUNT)
    dup_max_distance: int = setting(6, "near-duplicate: perceptual-hash Hamming distance at or below this",
                                    ge=0, le=64)
    matte: Literal["auto", "rembg", "grabcut", "none"] = setting("auto", "background removal: auto (rembg if its "
                                                                         "model is present, else GrabCut), rembg, "
                                                                         "grabcut or none")
    rembg_model: str = setting("u2net", "rembg model name; the file NAME.onnx is looked up in U2NET_HOME")
    matte_mask: Literal["full", "reduced"] = setting("full", "GrabCut's mask: full (320 px long side, feathered) or "
                                                             "reduced (160 px, edges refined at the render size "
                                                             "with a guided filter; about 6x faster)")
    shard_size: int = setting(1000, "accepted images per tar shard", ge=1, le=MAX_COUNT)
    max_aspect: float = setting(4.0, "aspect: long side / short side above this is rejected before any resize", ge=1,
                                le=1e6)
    max_member_bytes: int = setting(268435456, "bomb: a file or archive member above this many bytes is never "
                                               "written to the raw store", ge=1, le=1 << 40)
    max_compression_ratio: float = setting(200.0, "bomb: an archive member inflating more than this per "
                                                  "compressed byte (past 1 MiB)", ge=1, le=1e6)
    dask_address: DaskAddress = setting("", "Dask scheduler (tcp://host:8786) to run the batch tasks on; "
                                            "empty = this machine")
    dask_batch_size: int = setting(256, "images per batch task on a Dask cluster, where each task also pays "
                                         "Prefect's run set-up on the worker (about 0.3 CPU s)", ge=1, le=MAX_COUNT)

    @property
    def min_side(self) -> int:
        return int(round(self.min_side_fraction * self.resolution))

    def digest(self, *keys: str) -> str:
        """A short hash of the named settings: cache keys change exactly when those settings do."""
        picked = {k: getattr(self, k) for k in sorted(keys)}
        return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


class TrainSettings(Section):
    section: ClassVar[str] = "train"

    arch: Arch = trainer_setting("arch", "network family: stylegan2, stylegan3-t, stylegan3-r (with ADA, in "
                                      "cycles) or pggan (one stage per resolution)")
    resolution: Annotated[int, _power_of_two(4, 1024)] = trainer_setting(
        "resolution", "training resolution (a power of two from 4 to 1024, at most the dataset's)", ge=4, le=1024)
    kimg: float = setting(0.0, "total kimg; 0 = the stage plan's (stylegan2/3: cycles x cycle_kimg; pggan: full "
                               "growth)", ge=0, le=MAX_KIMG)
    seed: int = trainer_setting("seed", "seed for weights, data order and noise", ge=0, le=MAX_SEED)
    cycle_kimg: float = setting(5000.0, "StyleGAN2/3: kimg per stage task (a cycle)", ge=MIN_KIMG, le=MAX_KIMG)
    cycles: int = setting(5, "StyleGAN2/3: cycles when the run names no total kimg (total = cycles x cycle_kimg)",
                          ge=1, le=MAX_STAGES)
    fade_kimg: float = trainer_setting("fade_kimg", "PGGAN: kimg over which each new resolution fades in (the paper's 800; 0 = "
                                      "no fade-in)", ge=0, le=MAX_KIMG)
    stabilize_kimg: float = trainer_setting("stabilize_kimg", "PGGAN: kimg per resolution once faded in; one stage task per "
                                           "resolution", ge=MIN_KIMG, le=MAX_KIMG)
    snapshot_kimg: float = trainer_setting("snapshot_kimg", "checkpoint + sample grid every this many kimg (at least one image)",
                                   ge=MIN_KIMG, le=MAX_KIMG)
    retries: int = setting(3, "retries of a failed stage task; each attempt resumes from the newest checkpoint",
                           ge=0, le=100)
    retry_delay_seconds: float = setting(30.0, "wait before a retry (a transient disk or CUDA error may clear)",
                                         ge=0, le=86400)
    batch: int | None = trainer_setting("batch", f"images per step over all GPUs; empty = {FAMILY_DEFAULTS}",
                                        ge=1, le=65536)
    batch_gpu: int | None = trainer_setting("batch_gpu", "images per forward/backward pass on each GPU (NVIDIA's --batch-gpu): a divisor of "
                                "the per-GPU batch, trained in rounds whose gradients add up (gradient accumulation: "
                                "the same batch in less memory); empty = the whole per-GPU batch", ge=1, le=65536)
    channel_base: int | None = setting(None, "feature-map budget; empty = the preset's (smaller = faster, for CPU "
                                             "runs; stylegan3-r's G doubles it)", ge=1, le=1 << 20)
    channel_max: int | None = setting(None, "cap on feature maps per layer; empty = the preset's", ge=1, le=4096)
    net: dict[str, Any] = trainer_setting("net", "further architecture overrides for small runs, e.g. {z_dim: 32, w_dim: 32}: "
                                      "fields of the family's network config")
    preset: str = trainer_setting("preset", "network/training preset: auto (stylegan2: the reference's auto config; pggan: "
                                  "the paper's network), or for stylegan2 the reference's stylegan2, paper256, "
                                  "paper512, paper1024 or cifar, for pggan paper or small (4x narrower); stylegan3 "
                                  "has auto only", min_length=1)
    r1_gamma: float | None = trainer_setting("r1_gamma", "R1 regularization weight (the reference's --gamma); "
                                                         f"empty = {FAMILY_DEFAULTS}", ge=0)
    ada_target: float | None = trainer_setting("ada_target", "ADA target for E[sign(D(real))]; 0 = off; empty = "
                                                             f"{FAMILY_DEFAULTS}", ge=0, le=1)
    xflip: bool = trainer_setting("xflip", "x-flip dataset images at random (the reference's --mirror): twice the data "
                                 "for subjects that look the same mirrored")
    loss: Literal["logistic", "wgan", "lsgan"] | None = trainer_setting(
        "loss", f"GAN loss: logistic, wgan or lsgan; empty = {FAMILY_DEFAULTS}")
    device: Device = setting("auto", "auto (cuda when present, else cpu), cpu, cuda, cuda:N or mps")
    resume_from: str = setting("", "transfer learning: start from this network file (a ganflow .pt or an NVIDIA "
                                   ".pkl), whose architecture replaces arch, resolution and widths (given, they "
                                   "must agree); name it again to continue the run")
    freeze_d: int = trainer_setting("freeze_d", "Freeze-D: the pretrained discriminator's first N layers stay fixed, as the "
                               "reference's --freezed (needs resume_from)", ge=0, le=64)
    allow_nonfinite: bool = setting(False, "start from a resume_from network whose weights hold NaN or inf (refused "
                                           "by default: a run trains on NaN), as `ganflow import --allow-nonfinite`")

    @model_validator(mode="after")
    def _stages_are_few(self) -> "TrainSettings":
        # Each StyleGAN cycle is a stage task (and a Prefect task run): kimg against cycle_kimg bounds their number.
        total = self.kimg or self.cycles * self.cycle_kimg
        if total / self.cycle_kimg > MAX_STAGES:
            raise ValueError(f"train.kimg {total:g} in cycles of train.cycle_kimg {self.cycle_kimg:g} is "
                             f"{math.ceil(total / self.cycle_kimg):,} stage tasks, more than {MAX_STAGES:,}: "
                             "raise cycle_kimg or lower kimg")
        return self

    @model_validator(mode="after")
    def _freeze_needs_a_network(self) -> "TrainSettings":
        if self.freeze_d and not self.resume_from:
            raise ValueError(f"train.freeze_d {self.freeze_d} keeps a pretrained discriminator's first layers: "
                             "set train.resume_from (--resume-from) to the network file, or freeze_d 0")
        return self

    @model_validator(mode="after")
    def _batch_gpu_divides_the_batch(self) -> "TrainSettings":
        # What is known here: the batch when given (the preset's and the GPU count are the trainer's to check).
        if self.batch_gpu and self.batch and self.batch % self.batch_gpu:
            raise ValueError(f"train.batch_gpu {self.batch_gpu} does not divide train.batch {self.batch}: the "
                             "per-GPU batch is trained in rounds of batch_gpu images (0 = no rounds)")
        return self

    @model_validator(mode="after")
    def _preset_and_net_are_the_architectures(self) -> "TrainSettings":
        # Checked against models' own tables (models.arch.ARCHS), which import torch: only when there is
        # something to check, so loading the default settings stays torch-free (auto is every family's).
        if self.preset == "auto" and not self.net:
            return self
        from models.arch import family as registered

        # Started from a network file, the run's family is the file's (read later): any family's names pass here.
        archs, family = (ARCHS, "any family") if self.resume_from else ((self.arch,), self.arch)
        allowed = _union(registered(a).presets() for a in archs)
        if self.preset not in allowed:
            raise ValueError(f"train.preset {self.preset!r} is not a preset of {family} (known: {', '.join(allowed)})")
        keys = _union(registered(a).net_keys() for a in archs)
        unknown = [k for k in self.net if k not in keys]
        if unknown:
            named = ", ".join(map(repr, unknown))
            what = f"key {named} is not a network setting" if len(unknown) == 1 else \
                f"keys {named} are not network settings"
            raise ValueError(f"train.net {what} of {family} (known: {', '.join(keys)})")
        return self


def _union(groups) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


# The train flow's own settings (its stage tasks' retries): plain `ganflow train` and the DVC train stage, which trains
# without stage tasks, neither take nor read them.
TRAIN_FLOW_ONLY = ("retries", "retry_delay_seconds")


class ManagerSettings(Section):
    section: ClassVar[str] = "manager"

    queue: str = setting("runs/queue.sqlite", "training request queue: a SQLite file (one machine), or prefect://NAME "
                                              "(kept on the Prefect server every manager reaches); $GANFLOW_QUEUE or "
                                              "--queue override it", min_length=1)
    interval_seconds: float = setting(120.0, "`ganflow manager` without --once: one pass every this many seconds",
                                      ge=1, le=86400)
    stale_after_seconds: float = setting(600.0, "a Running run with no heartbeat, progress or state change for this "
                                                "long lost its machine", ge=1, le=30 * 86400)
    max_attempts: int = setting(3, "attempts per request (first run + restarts); then it is marked failed", ge=1,
                                le=1000)
    max_running: int = setting(1, "requests training at once; 0 = no limit (the work pool's limit decides)", ge=0,
                               le=MAX_COUNT)
    deployment: str = setting("", "empty = start training processes on this machine; train/NAME = run that "
                                  "deployment (GPU work pools)")


class EvaluateSettings(Section):
    section: ClassVar[str] = "evaluate"

    inception_weights: str = setting("", "torch-fidelity's weights-inception-2015-12-05-6726825d.pth, or random (a "
                                         "smoke run); --inception-weights, then $GANFLOW_INCEPTION_WEIGHTS, come "
                                         "before this setting")
    inception_sha256: str = setting("", "expected sha256 of that file; empty = only the weights_only check")
    n_fake: int = setting(10000, "generated images per snapshot (the papers use 50000; below 2048 FID is biased)",
                          ge=2, le=1_000_000)
    n_real: int = setting(0, "real images for the statistics; 0 = all of the dataset", ge=0, le=100_000_000)
    batch: int = setting(64, "images per extractor batch", ge=1, le=65536)
    kid: bool = setting(True, "also KID (mean, std over random subsets)")
    # KID's unbiased MMD needs 2 images a subset (1 fails after the extraction). The upper bounds catch a typo:
    # a subset is capped at the image count, which n_fake caps at 10^6, and 10^5 subsets are hours of kernels.
    kid_subsets: int = setting(100, "KID subsets (torch-fidelity's default)", ge=1, le=100_000)
    kid_subset_size: int = setting(1000, "images per KID subset, capped at the image count", ge=2, le=1_000_000)
    cache_dir: str = setting("data/cache/fid", "real-data statistics, keyed by the dataset's content hash and the "
                                               "weights' sha256")
    diverge_fid_rises: int = setting(3, "divergence: FID rose this many snapshots in a row (0 = off)", ge=0, le=1000)
    diverge_d_loss: float = setting(0.05, "divergence: D loss below this while G loss climbs", ge=0, le=1e6)
    metrics: Metrics = setting(("fid",), "Fréchet distances to compute, each in its extractor's features (and "
                                         "precision/recall in DINOv2's when computed, else Inception's); best = "
                                         "lowest fid, else fd_dinov2")
    dinov2_weights: str = setting("", "Meta's dinov2_vitl14_pretrain.pth (or vits14/vitb14), or random (a smoke run); "
                                      "--dinov2-weights, then $GANFLOW_DINOV2_WEIGHTS, come before this setting")
    dinov2_sha256: str = setting("", "expected sha256 of that file; empty = only the weights_only check")
    memorized_quantile: float = setting(0.05, "memorization threshold: this quantile of training images' distances "
                                              "to their nearest other one", gt=0, lt=1)
    max_memorized: float = setting(0.25, "a snapshot with more generated images below that threshold is never "
                                         "best (1 = off)", ge=0, le=1)

    @property
    def rank_by(self) -> str:
        """The column the best snapshot and the divergence monitor go by: fid, else fd_dinov2."""
        return "fid" if "fid" in self.metrics else "fd_dinov2"


SECTIONS: dict[str, type[Section]] = {m.section: m for m in (IngestSettings, CurateSettings, TrainSettings,
                                                              ManagerSettings, EvaluateSettings)}
# A params file without these sections takes the models' defaults (evaluation settings are optional).
OPTIONAL_SECTIONS = {"evaluate"}


# ------------------------------------------------------------------------------------------- loading

def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """params.yaml as a dict of sections, or a one-line ParamsError. A file above MAX_PARAMS_BYTES is refused
    before it is read, and its YAML (bounded_yaml) before any object is built."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path} (run from the project root or pass --params)")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_PARAMS_BYTES + 1)
        if len(raw) > MAX_PARAMS_BYTES:
            raise ParamsError(f"params file {path} is larger than {MAX_PARAMS_BYTES // 1024} KiB: not a settings file")
        data = bounded_yaml(raw.decode("utf-8"), f"params file {path}") or {}
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"params file {path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path} must hold a mapping of sections")
    return data


def bounded_yaml(text: str, what: str) -> Any:
    """yaml.safe_load(text) once the parser's events show the document is small: its aliases expand to at most
    MAX_YAML_NODES nodes, it nests at most MAX_YAML_DEPTH deep, and no value is longer than MAX_YAML_SCALAR
    characters (a 5001-digit integer). Each refusal is a ParamsError naming the setting (section.key) and the rule;
    invalid YAML names the line and column."""
    try:
        _check_yaml_events(text, what)
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # one line: where the YAML broke, not a parser traceback
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ParamsError(f"{what} is not valid YAML{where}: {problem}") from None


def _check_yaml_events(text: str, what: str) -> None:
    # Per open collection: [anchor, nodes so far, is a mapping, next scalar is a key, current key]
    stack: list[list[Any]] = []
    sizes: dict[str, int] = {}
    total = 0

    def key_path() -> str:
        keys = [str(f[4]) for f in stack if f[2] and f[4] is not None]
        return ".".join(keys) or "the document"

    def add(nodes: int, anchor: str | None) -> None:
        nonlocal total
        if anchor:
            sizes[anchor] = nodes
        if stack:
            stack[-1][1] += nodes
        else:
            total += nodes
        if total + sum(f[1] for f in stack) > MAX_YAML_NODES:
            raise ParamsError(f"{what}: {key_path()} expands to more than {MAX_YAML_NODES:,} values (YAML aliases "
                              "repeating others: not a settings file)")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        parent = stack[-1] if stack else None
        as_key = parent is not None and parent[2] and parent[3]
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_YAML_DEPTH:
                raise ParamsError(f"{what}: {key_path()} nests more than {MAX_YAML_DEPTH} levels deep")
            if parent is not None and parent[2]:
                parent[3] = not parent[3]
            stack.append([event.anchor, 0, isinstance(event, yaml.MappingStartEvent), True, None])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, nodes = stack.pop()[:2]
            add(nodes + 1, anchor)
        elif isinstance(event, yaml.ScalarEvent):
            if len(event.value) > MAX_YAML_SCALAR:
                where = key_path() + (f" (a key of {len(event.value):,} characters)" if as_key else "")
                raise ParamsError(f"{what}: {where} holds a value of {len(event.value):,} characters (at most "
                                  f"{MAX_YAML_SCALAR:,})")
            if parent is not None and parent[2]:
                if parent[3]:
                    parent[4] = event.value
                parent[3] = not parent[3]
            add(1, event.anchor)
        elif isinstance(event, yaml.AliasEvent):
            if parent is not None and parent[2]:
                parent[3] = not parent[3]
            add(sizes.get(event.anchor or "", 1), None)


def load(model: type[S], path: str | Path = DEFAULT_PARAMS, *, missing_ok: bool = False, **overrides: Any) -> S:
    """One section of params.yaml as its settings model, with overrides (None = keep the file's value).
    missing_ok: a file without the section gives the model's defaults (with the overrides)."""
    path = Path(path)
    optional = missing_ok or model.section in OPTIONAL_SECTIONS
    if optional and not path.is_file():
        section: Any = {}
    else:
        data = read_params(path)
        if model.section not in data and not optional:
            raise ParamsError(f"{path} has no '{model.section}' section")
        section = data.get(model.section) or {}
    if not isinstance(section, dict):
        raise ParamsError(f"{path}: section '{model.section}' must be a mapping of settings, not {section!r}")
    return _validate(model, {**section, **{k: v for k, v in overrides.items() if v is not None}})


def _validate(model: type[S], values: dict[str, Any]) -> S:
    try:
        return model.model_validate(values)
    except ValidationError as e:
        raise ParamsError("; ".join(_problem(model, err) for err in e.errors())) from None


def _problem(model: type[Section], err: Any) -> str:
    """One ValidationError entry as `train.kimg -1 is not a finite number >= 0`."""
    loc = [str(part) for part in err["loc"]]
    if not loc:  # a check across settings: its message names them
        return str(err["msg"]).removeprefix("Value error, ")
    key = f"{model.section}.{loc[0]}"
    if err["type"] == "extra_forbidden":
        return f"{key} is not a setting (known: {', '.join(model.model_fields)})"
    if err["type"] == "value_error":  # a named rule's or a list check's own words: "is not ..."
        return f"{key} {shown_input(err['input'])} {str(err['msg']).removeprefix('Value error, ')}"
    return f"{key} {shown_input(err['input'])} is not {rule(model.model_fields[loc[0]])}"


def shown_input(value: Any) -> str:
    """The value as the user wrote it, cut short when long (a 10,000-character hashtag is not echoed whole); its
    start and its end stay, so a long path still shows its file name."""
    text = repr(value)
    n = len(value) if isinstance(value, str) else len(text)
    return text if len(text) <= 160 else f"{text[:60]}...{text[-60:]} ({n:,} characters)"


def annotation(field: FieldInfo) -> Any:
    """The field's type without its None (a setting whose default is "the family's": empty, or a value)."""
    ann: Any = field.annotation
    if isinstance(ann, types.UnionType) or getattr(ann, "__origin__", None) is Union:
        rest = tuple(a for a in get_args(ann) if a is not type(None))
        return rest[0] if len(rest) == 1 else Union[rest]
    return ann


def rule(field: FieldInfo) -> str:
    """What a field accepts, in words: `a finite number >= 0`, `an integer from 0 to 64`, `one of a, b`."""
    for m in field.metadata:
        if isinstance(getattr(m, "func", None), Rule):
            return m.func.text
    ann: Any = annotation(field)
    choices = get_args(ann) if getattr(ann, "__origin__", None) is Literal else ()
    if choices:
        return "one of " + ", ".join(repr(c) if c == "" else str(c) for c in choices)
    if ann is bool:
        return "true or false"
    kind = {int: "an integer", float: "a finite number"}.get(ann)
    if kind is None:
        if ann is str and any(isinstance(m, MinLen) and m.min_length > 0 for m in field.metadata):
            return "a non-empty text"
        return {str: "a text", dict: "a mapping"}.get(getattr(ann, "__origin__", ann), "valid")
    lo = next(((m.ge, False) for m in field.metadata if isinstance(m, Ge)), None) or \
        next(((m.gt, True) for m in field.metadata if isinstance(m, Gt)), None)
    hi = next(((m.le, False) for m in field.metadata if isinstance(m, Le)), None) or \
        next(((m.lt, True) for m in field.metadata if isinstance(m, Lt)), None)
    if lo and hi and not lo[1] and not hi[1]:
        return f"{kind} from {_num(lo[0])} to {_num(hi[0])}"
    parts = [f"{'>' if lo[1] else '>='} {_num(lo[0])}"] if lo else []
    parts += [f"{'<' if hi[1] else '<='} {_num(hi[0])}"] if hi else []
    return f"{kind} {' and '.join(parts)}".strip()


def _num(x: Any) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# ------------------------------------------------------------------------------------------- overrides

def overrides_model(model: type[Section], exclude: tuple[str, ...] = ()) -> type[BaseModel]:
    """The same fields, each optional (None = params.yaml's value), with the same bounds and descriptions:
    what a flow takes as its settings parameter, so the Prefect UI's form shows every setting (but those in
    `exclude`, which the flow takes otherwise or does not use)."""
    fields: dict[str, Any] = {}
    for name, f in model.model_fields.items():
        if name in exclude:
            continue
        typ: Any = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        fields[name] = (typ | None, Field(None, description=f.description, title=name))
    def form(schema: dict[str, Any]) -> None:  # the UI form: params.yaml's values named, the rules it can check
        from tasks.common.forms import complete_form

        complete_form(schema, model)

    overrides = create_model(f"{model.__name__.removesuffix('Settings')}Overrides",
                             __config__=ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True,
                                                   json_schema_extra=form), **fields)
    overrides.__doc__ = (f"params.yaml's `{model.section}` settings to change for this run; empty ones keep "
                         "params.yaml's value.")
    return overrides


TrainOverrides = overrides_model(TrainSettings)
CurateOverrides = overrides_model(CurateSettings)
# What the curate and pipeline flows take of the `ingest` section: they name the source as their own parameters.
IngestOverrides = overrides_model(IngestSettings, exclude=("source", "input", "hashtag"))
EvaluateOverrides = overrides_model(EvaluateSettings)
# One manager pass: the queue is its own parameter (it comes after $GANFLOW_QUEUE's), and the loop's interval is
# the deployment's schedule.
ManagerOverrides = overrides_model(ManagerSettings, exclude=("queue", "interval_seconds"))


def declared(model: type[Section], key: str) -> Any:
    """A setting's declared default, for a function that takes the setting as a keyword (its one home is here)."""
    return model.model_fields[key].get_default(call_default_factory=True)


def given(overrides: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """The settings an overrides object names (those not None)."""
    if overrides is None:
        return {}
    values = overrides if isinstance(overrides, dict) else overrides.model_dump()
    return {k: v for k, v in values.items() if v is not None}

