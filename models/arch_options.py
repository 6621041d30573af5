"""What a run may name for each architecture beyond a setting's type: its presets and the keys of its `net`
(overrides of the network config). The settings check train.preset and train.net against these before any
data is read, instead of a TypeError from a config dataclass mid-run.

Both come from the architectures' own tables (the preset specs, the config dataclasses' fields); the model
modules are imported when asked, since they bring torch. Every architecture has the preset `auto`.
"""
from __future__ import annotations

import dataclasses

# Keys of the config dataclasses that a run sets itself: train.resolution, the data's RGB channels, and (but for
# StyleGAN3, whose D takes it from net) the minibatch-std group, which models.arch clamps to the batch.
_RUN_SETS = frozenset({"resolution", "channels"})
_BATCH_SETS = frozenset({"mbstd_group"})


def presets(arch: str) -> tuple[str, ...]:
    """The preset names `arch` builds (TrainConfig.preset), `auto` first."""
    if arch == "stylegan2":
        from models import stylegan2

        return stylegan2.PRESETS
    if arch == "pggan":
        from models import pggan

        return ("auto", *pggan.PRESETS)  # PGGANArch builds auto as paper
    if arch in ("stylegan3-t", "stylegan3-r"):
        return ("auto",)  # StyleGAN3Arch: the reference's --cfg stylegan3-t|r is one configuration each
    raise ValueError(f"unknown arch {arch!r}")


def net_keys(arch: str) -> tuple[str, ...]:
    """The keys `arch` takes in TrainConfig.net: its config dataclass's fields but those the run sets."""
    from models.stylegan2 import StyleGAN2Config

    if arch == "stylegan2":
        return _names(StyleGAN2Config, _RUN_SETS | _BATCH_SETS)
    if arch == "pggan":
        from models.pggan import PGGANConfig

        return _names(PGGANConfig, _RUN_SETS | _BATCH_SETS)
    if arch in ("stylegan3-t", "stylegan3-r"):
        from models.stylegan3 import StyleGAN3Config

        # StyleGAN3Arch: G's config, D's (a StyleGAN2 one), and G widths off the --cfg rule (a network file's)
        g_keys = _names(StyleGAN3Config, _RUN_SETS)
        return g_keys + tuple(k for k in _names(StyleGAN2Config, _RUN_SETS) if k not in g_keys) + \
            ("g_channel_base", "g_channel_max")
    raise ValueError(f"unknown arch {arch!r}")


def _names(config: type, leave_out: frozenset[str]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config) if f.name not in leave_out)
