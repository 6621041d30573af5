"""The trainer's config: the library's defaults for every training setting, and the architecture names.

Torch-free, so the settings (tasks/common/settings.py) take their training defaults from here without loading
torch: a default is written once, here, and params.yaml's `train` section is rendered from the settings.
None means "the family's": models.arch.FAMILY_DEFAULTS resolves it, once, and the trainer's summary says to what.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

# The architectures models.arch builds (its ARCHS registry is checked against this list when it is imported).
ArchName = Literal["stylegan2", "stylegan3-t", "stylegan3-r", "pggan"]
ARCH_NAMES: tuple[str, ...] = get_args(ArchName)


# How checkpoints and code written before None meant "the family's" spelled it (never a valid value otherwise).
_OLD_UNSET: dict[str, Any] = {"batch": 0, "batch_gpu": 0, "lr": 0.0, "loss": "", "r1_gamma": -1.0,
                              "pl_weight": -1.0, "style_mixing": -1.0, "ema_kimg": -1.0, "ada_target": -1.0}


# Before, params.yaml's train.ada_target (0.6) reached StyleGAN2/3 runs as a value, while it is their family's.
_OLD_ADA_TARGET = 0.6


@dataclass
class TrainConfig:
    arch: str = "stylegan2"          # network family: stylegan2 | stylegan3-t | stylegan3-r | pggan
    resolution: int = 256            # training resolution
    preset: str = "auto"             # network/training preset (see models.arch)
    batch: int | None = None         # images per step over all processes; None = the family's
    batch_gpu: int | None = None     # images per forward/backward pass on each process (NVIDIA's --batch-gpu): the
                                     # step runs in rounds whose gradients add up; None = the process's whole share
    lr: float | None = None          # Adam learning rate; None = the family's
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas, as the reference
    loss: str | None = None          # logistic | wgan | lsgan; None = the family's
    r1_gamma: float | None = None    # R1 weight; None = the family's
    r1_interval: int = 16            # lazy R1: every this many steps, scaled up to match
    pl_weight: float | None = None   # StyleGAN2 path-length regularization weight; None = the family's, 0 = off
    pl_interval: int = 4             # lazy path-length regularization: every this many steps
    style_mixing: float | None = None  # StyleGAN2 style-mixing probability; None = the family's, 0 = off
    gp_gamma: float = 10.0           # WGAN-GP weight (loss=wgan)
    ema_kimg: float | None = None    # G_ema half-life in kimg; None = the family's
    ema_rampup: float = 0.05         # EMA ramp-up (fraction of images seen) where the reference ramps up; 0 = off
    ada_target: float | None = None  # ADA: target E[sign(D(real))]; 0 = off; None = the family's
    ada_interval: int = 4            # ADA: adjust p every this many steps
    ada_kimg: float = 500.0          # ADA: p can go 0 → 1 in this many kimg
    fade_kimg: float = 800.0         # PGGAN: kimg over which a new resolution fades in (the paper's); 0 = no fade-in
    stabilize_kimg: float = 800.0    # PGGAN: kimg per resolution once faded in (the paper's); must be > 0
    xflip: bool = False              # dataset x-flips
    snapshot_kimg: float = 50.0      # checkpoint every this many kimg
    seed: int = 0                    # one seed for weights, sampler, noise
    amp: str = "auto"                # mixed precision: auto (bf16 on CUDA, off on CPU) | bf16 | off
    net: dict = field(default_factory=dict)  # architecture overrides (e.g. channel_base for small CPU runs)
    dataset: str = ""                # content hash of the training set: a run dir never continues on other data
    freeze_d: int = 0                # Freeze-D: D's first N layers never train (the reference's --freezed)
    transfer_from: str = ""          # transfer learning: the network file G/D/G_ema started from ("" = none)
    transfer_sha256: str = ""        # its sha256: a run dir never continues from other starting networks

    def __post_init__(self) -> None:
        # Code written before None meant "the family's" spelled it 0, -1 or '' (_OLD_UNSET): read as None, once,
        # here, so such a config builds the same networks (the training-parity tests pass lr=0.0 that way).
        for name, old in _OLD_UNSET.items():
            value = getattr(self, name)
            if value is not None and value == old and not isinstance(value, bool):
                setattr(self, name, None)


def saved_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's recorded config with an older checkpoint's "the family's" values as None, so a run
    continues across the upgrade and a recorded run rebuilds the same networks."""
    out = {k: None if k in _OLD_UNSET and v == _OLD_UNSET[k] else v for k, v in saved.items()}
    if out.get("ada_target") == _OLD_ADA_TARGET and out.get("arch", "stylegan2") != "pggan":
        out["ada_target"] = None  # the same target: models.arch.FAMILY_DEFAULTS' for StyleGAN2/3
    return out


def from_saved(saved: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a checkpoint recorded (keys it predates take their defaults; unknown ones are dropped)."""
    known = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved_config(saved).items() if k in known})
