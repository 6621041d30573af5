"""A run's settings when it starts from a pretrained network (`--resume-from`, `train.resume_from`).

The architecture comes from the file: family, resolution, latent sizes, widths, mapping layers, ...
An option the user gave that contradicts it is refused, naming every key that differs (the trap NVIDIA's
train.py sets: fine-tuning a paper256 network under the auto config builds another network and fails, or
worse, copies what fits). Settings the user did not give (params.yaml's train section is a set of defaults
for runs trained from scratch) are replaced by the file's, and said so. Training hyperparameters (batch,
lr, gamma, ADA target) stay the run's own; as the reference does for --resume, ADA reacts faster
(ada_kimg 100) and G_ema has no ramp-up.

Prefect-free: the CLI, the train flow and the DVC stage call it.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from models.transfer import RUNTIME_KEYS, TransferError, arch_settings, file_sha256, load_networks
from models.trainer import TrainConfig

# Options (CLI flags, flow parameters) that name an architecture: given, they must agree with the file.
ARCH_OPTIONS = ("arch", "resolution", "channel_base", "channel_max")
TRANSFER_ADA_KIMG = 100.0   # the reference's train.py for --resume: "make ADA react faster at the beginning"


def arch_conflicts(file_values: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """'key (file X, given Y)' for every option given that differs from the file. None or 0 (a width's
    "the preset's") is not given."""
    return [f"{k} (file {file_values[k]}, given {v})" for k, v in given.items()
            if k in file_values and v not in (None, 0, "") and v != file_values[k]]


def file_architecture(source: str | Path, given: dict[str, Any] | None = None) -> tuple[str, int, dict]:
    """(family, resolution, net) of a network file (a .pt is memory-mapped: only its record is read). The
    architecture options in `given` (flag → value, as the user named them) that contradict it are refused,
    all named in one line."""
    name, resolution, net = arch_settings(load_networks(source, mmap=True).arch)
    file_values = {"arch": name, "resolution": resolution, "channel_base": net.get("channel_base"),
                   "channel_max": net.get("channel_max")}
    clashes = arch_conflicts(file_values, {k: v for k, v in (given or {}).items() if k in ARCH_OPTIONS})
    if clashes:
        raise TransferError(f"{source} is a {name} network at {resolution}², and the options given contradict it: "
                            f"{', '.join(clashes)}; leave them out: a run started from a network takes its "
                            "architecture")
    return name, resolution, net


def transfer_config(cfg: TrainConfig, source: str | Path, given: dict[str, Any] | None = None
                    ) -> tuple[TrainConfig, list[str]]:
    """cfg for a run that starts from the networks in `source`: the file's architecture, the file's path and
    sha256 (recorded in every checkpoint, so the run continues only from the same starting networks), the
    reference's transfer settings. `given`: as for file_architecture. Returns the config and notes on the
    settings of cfg that the file replaced."""
    source = str(source)
    name, resolution, net = file_architecture(source, given)
    # What the file overrides can only be params.yaml's defaults: options given that differ were refused above.
    replaced = [f"train.arch {cfg.arch}"] if cfg.arch != name else []
    replaced += [f"train.resolution {cfg.resolution}"] if cfg.resolution != resolution else []
    replaced += [f"train.{'' if k in ARCH_OPTIONS else 'net.'}{k} {v}" for k, v in sorted(cfg.net.items())
                 if k not in RUNTIME_KEYS and net.get(k, v) != v]
    shape = ", ".join(f"{k} {net[k]}" for k in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max")
                      if k in net)
    notes = [f"architecture from {source}: {name} at {resolution}²" + (f" ({shape})" if shape else "")]
    if replaced:
        notes.append(f"it replaces {', '.join(replaced)} (settings for runs from scratch)")
    runtime = {k: v for k, v in cfg.net.items() if k in RUNTIME_KEYS}
    cfg = replace(cfg, arch=name, resolution=resolution, net={**runtime, **net}, transfer_from=source,
                  transfer_sha256=file_sha256(source), ada_kimg=TRANSFER_ADA_KIMG, ema_rampup=0.0)
    return cfg, notes
