"""Per-architecture glue for the one training loop: build G/D, call them, schedule them; and ARCHS, the one list
of architectures, with the traits the code around the loop asks of each (tasks/ never compares a name).

A StyleGAN2 step is G(z) and D(x). The adapter also carries everything that is a pure function of the
number of images seen (a PGGAN's stage and fade-in alpha), so a resume restores it exactly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol, overload

import torch
from torch import nn

from models.distributed import world_size
from models.train_config import ARCH_NAMES


class Arch(Protocol):
    G: nn.Module
    D: nn.Module
    batch: int
    lr: float
    d_lr: float  # D's Adam learning rate (the reference's --dlr; StyleGAN3's differs from G's)
    loss: str
    lazy_r1: bool
    r1_gamma: float
    ema_kimg: float
    resolved: dict  # the settings the run left None, as the family resolved them (for the log)
    ema_rampup: float  # G_ema's half-life is at most this fraction of the images seen; 0 = no ramp-up
    z_dim: int
    ada_target: float
    pl_weight: float
    style_mixing: float
    stats_in_d_step: bool  # G's running statistics (w_avg...) move in D's pass over fakes, not in G's step


    # Images alone, or (images, ws) with return_ws=True: two overloads so each call site gets its exact type.
    @overload
    def generate(self, G: nn.Module, z: torch.Tensor, nimg: int, update_stats: bool = True,
                 return_ws: Literal[False] = False) -> torch.Tensor: ...
    @overload
    def generate(self, G: nn.Module, z: torch.Tensor, nimg: int, update_stats: bool = True, *,
                 return_ws: Literal[True]) -> tuple[torch.Tensor, torch.Tensor]: ...
    # D's logits; `augment` (ADA's pipe) runs on what D would see, after any input filter of the family's
    # (StyleGAN3-R's blur), as the reference's run_D.
    def discriminate(self, D: nn.Module, images: torch.Tensor, nimg: int,
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor: ...
    def prepare_reals(self, reals: torch.Tensor, nimg: int) -> torch.Tensor: ...
    def progress(self, nimg: int) -> dict: ...
    def describe(self) -> dict: ...


def _pass_batch(batch: int, batch_gpu: int | None) -> int:
    """Images in one forward pass of a process: batch_gpu (gradient accumulation, checked by the trainer), else its
    whole share of the global batch split over torchrun's processes."""
    return batch_gpu or max(batch // world_size(), 1)


# ------------------------------------------------------------------------------------ the families' defaults

@dataclass(frozen=True)
class Context:
    """What a family's default may depend on: the run's config, its batch (once resolved) and its preset's
    training defaults (models.stylegan2.TrainDefaults, models.pggan.PGGANTrainDefaults; None for StyleGAN3)."""

    cfg: Any
    batch: int
    preset: Any


def _sg2_preset_or_auto(auto: Callable[[Context], float], fixed: str) -> Callable[[Context], float]:
    # The reference's 'auto' scales gamma and EMA with the minibatch, so they follow an overridden batch; its
    # fixed configs keep their own values.
    return lambda c: auto(c) if c.cfg.preset == "auto" else getattr(c.preset, fixed)


def _sg2_table() -> dict[str, Callable[[Context], Any]]:
    from models.stylegan2 import auto_ema_kimg, auto_r1_gamma

    return {
        "batch": lambda c: c.preset.minibatch,
        "lr": lambda c: c.preset.lr,
        "loss": lambda c: "logistic",
        "r1_gamma": _sg2_preset_or_auto(lambda c: auto_r1_gamma(c.cfg.resolution, c.batch), "r1_gamma"),
        "ema_kimg": _sg2_preset_or_auto(lambda c: auto_ema_kimg(c.batch), "ema_kimg"),
        "ada_target": lambda c: 0.6,
        # The reference's StyleGAN2Loss defaults (its cifar config turns both off; ganflow's cifar preset keeps them).
        "pl_weight": lambda c: 2.0,
        "style_mixing": lambda c: 0.9,
    }


def _sg3_table() -> dict[str, Callable[[Context], Any]]:
    from models.stylegan2 import auto_ema_kimg, auto_minibatch

    # The reference makes --gamma and --batch mandatory: these are the values of its recommended configs.
    return {
        "batch": lambda c: auto_minibatch(c.cfg.resolution, world_size()),
        "lr": lambda c: 0.0025,
        "d_lr": lambda c: 0.002,  # train.py's --dlr; a run's lr, given, is both nets'
        "loss": lambda c: "logistic",
        "r1_gamma": lambda c: c.cfg.resolution ** 2 / 32768,  # 0.5 at 128, 2 at 256, 8 at 512, 32 at 1024
        "ema_kimg": lambda c: auto_ema_kimg(c.batch),
        "ada_target": lambda c: 0.6,
        "pl_weight": lambda c: 0.0,
        "style_mixing": lambda c: 0.0,
    }


def _pggan_table() -> dict[str, Callable[[Context], Any]]:
    from models.pggan import paper_minibatch

    return {
        "batch": lambda c: paper_minibatch(c.cfg.resolution),
        "lr": lambda c: c.preset.lr,
        "loss": lambda c: c.preset.loss,
        "r1_gamma": lambda c: 10.0,
        "ema_kimg": lambda c: c.preset.ema_kimg(c.batch),
        "ada_target": lambda c: 0.0,  # the paper trains without augmentation
    }


# Each family's value for every TrainConfig setting a run leaves None: one row per family, each formula once.
FAMILY_DEFAULTS: dict[str, Callable[[], dict[str, Callable[[Context], Any]]]] = {
    "stylegan2": _sg2_table, "stylegan3-t": _sg3_table, "stylegan3-r": _sg3_table, "pggan": _pggan_table}


def resolved_text(resolved: dict[str, Any]) -> str:
    """The settings a run left empty and what its family gave them, for the log: `; the family's: batch 32, ...`."""
    shown = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in resolved.items()]
    return f"; the family's: {', '.join(shown)}" if shown else ""


class _Defaults:
    """A run's settings with None resolved from its family's row; `resolved` keeps what was, for the log."""

    def __init__(self, cfg, preset: Any = None) -> None:
        self.cfg, self.preset, self.table = cfg, preset, FAMILY_DEFAULTS[cfg.arch]()
        self.resolved: dict[str, Any] = {}
        self.batch = 0
        self.batch = self("batch")

    def __call__(self, name: str, given: str | None = None) -> Any:
        value = getattr(self.cfg, given or name)
        if value is None:
            value = self.table[name](Context(self.cfg, self.batch, self.preset))
            self.resolved[name] = value
        return value


# Keys of the config dataclasses that a run sets itself: train.resolution, the data's RGB channels, and (but for
# StyleGAN3, whose D takes it from net) the minibatch-std group, which the adapters clamp to the batch.
_RUN_SETS = frozenset({"resolution", "channels"})
_BATCH_SETS = frozenset({"mbstd_group"})


def _fields(config: type, leave_out: frozenset[str]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config) if f.name not in leave_out)


class StyleGAN2Arch:
    stats_in_d_step = True  # w_avg moves in D's pass over fakes, as NVlabs/stylegan3's loss (update_emas in Dgen)

    def __init__(self, cfg):
        from models.stylegan2 import Discriminator, Generator, preset

        net, defaults = preset(cfg.resolution, gpus=world_size(), kind=cfg.preset)  # auto scales with GPUs
        family = _Defaults(cfg, defaults)
        self.batch = family.batch
        # The minibatch-std group must divide each pass's batch; the reference clamps it the same way (its layer takes
        # min(group, batch_gpu)).
        net = dataclasses.replace(net, mbstd_group=min(net.mbstd_group, _pass_batch(self.batch, cfg.batch_gpu)),
                                  **cfg.net)
        self.net = net
        self.G, self.D = Generator(net), Discriminator(net)
        self.lr = self.d_lr = family("lr")
        self.loss = family("loss")
        self.lazy_r1 = self.loss == "logistic"
        self.r1_gamma = family("r1_gamma")
        self.ema_kimg = family("ema_kimg")
        # The reference ramps G_ema up in its auto and cifar configs only (cfg_specs' ramp).
        self.ema_rampup = cfg.ema_rampup if defaults.ema_rampup else 0.0
        self.z_dim = net.z_dim
        self.ada_target = family("ada_target")
        self.pl_weight = family("pl_weight")
        self.style_mixing = family("style_mixing")
        self.resolved = family.resolved

    def generate(self, G, z, nimg, update_stats=True, return_ws=False):
        ws = G.mapping(z, update_w_avg=update_stats)
        if self.style_mixing > 0:
            # Style mixing: with this probability the batch switches to a second latent's ws from a random
            # layer on (one cutoff per batch, as the reference), so styles do not rely on their neighbours.
            # Drawn as the reference draws them (cutoff, coin, second latent, the latent even when the coin
            # says no), so one torch stream gives both codes the same mixes.
            cutoff = int(torch.empty([], dtype=torch.int64).random_(1, ws.shape[1]))
            mix = float(torch.rand([])) < self.style_mixing
            z2 = torch.randn_like(z)
            if mix:
                ws = torch.cat([ws[:, :cutoff], G.mapping(z2, update_w_avg=False)[:, cutoff:]], 1)
        images = G.synthesis(ws)
        return (images, ws) if return_ws else images

    def discriminate(self, D, images, nimg, augment=None):
        return D(augment(images) if augment is not None else images)

    def prepare_reals(self, reals, nimg):
        return reals

    def progress(self, nimg):
        return {}

    def describe(self) -> dict:
        return {"name": "stylegan2", "net": self.net.to_dict()}

    @staticmethod
    def generator(net: dict) -> nn.Module:
        from models.stylegan2 import Generator, StyleGAN2Config

        return Generator(StyleGAN2Config.from_dict(net))


    @staticmethod
    def presets() -> tuple[str, ...]:
        """The preset names TrainConfig.preset may take, `auto` first."""
        from models.stylegan2 import PRESETS

        return PRESETS

    @staticmethod
    def net_keys() -> tuple[str, ...]:
        """The keys TrainConfig.net may override: the config dataclass's fields but those the run sets."""
        from models.stylegan2 import StyleGAN2Config

        return _fields(StyleGAN2Config, _RUN_SETS | _BATCH_SETS)

class PGGANArch:
    """PGGAN: G and D grow from 4x4; the stage and fade-in alpha are a pure function of images seen
    (models.pggan.GrowthSchedule), so a resumed run is at exactly the same point of growth."""

    stats_in_d_step = False  # no running statistics

    def __init__(self, cfg):
        from models.pggan import Discriminator, Generator, GrowthSchedule, preset

        kind = "paper" if cfg.preset == "auto" else cfg.preset
        net, defaults = preset(cfg.resolution, kind=kind)
        family = _Defaults(cfg, defaults)
        self.batch = family.batch
        # Minibatch-std groups must divide each pass's batch: the largest of at most the preset's that does.
        local = _pass_batch(self.batch, cfg.batch_gpu)
        group = next(g for g in range(min(net.mbstd_group, local), 0, -1) if local % g == 0)
        net = dataclasses.replace(net, mbstd_group=group, **cfg.net)
        self.net = net
        self.G, self.D = Generator(net), Discriminator(net)
        self.lr = self.d_lr = family("lr")
        self.loss = family("loss")
        self.lazy_r1 = self.loss == "logistic"
        self.r1_gamma = family("r1_gamma")
        self.ema_kimg = family("ema_kimg")
        self.ema_rampup = 0.0  # the paper's G_ema: beta 0.999 from the first step
        self.z_dim = net.z_dim
        self.ada_target = family("ada_target")
        # StyleGAN2's regularizers need its mapping network: off whatever the run gives
        self.pl_weight = self.style_mixing = 0.0
        self.resolved = family.resolved
        # fade_kimg 0 is no fade-in (a new resolution switches on at once), never "the preset's": the stage plan
        # (tasks) computes its stage ends from the same numbers, so the two agree.
        self.schedule = GrowthSchedule(net.max_stage, stabilize_kimg=cfg.stabilize_kimg, fade_kimg=cfg.fade_kimg)

    def generate(self, G, z, nimg, update_stats=True, return_ws=False):
        if return_ws:  # the Arch protocol's; only path-length regularization asks, and pl_weight is 0 here
            raise ValueError("pggan has no intermediate latent w (no mapping network): return_ws is StyleGAN's")
        stage, alpha = self.schedule.at(nimg)
        return G(z, stage=stage, alpha=alpha)

    def discriminate(self, D, images, nimg, augment=None):
        stage, alpha = self.schedule.at(nimg)
        return D(augment(images) if augment is not None else images, stage=stage, alpha=alpha)

    def prepare_reals(self, reals, nimg):
        from models.pggan import fade_reals

        return fade_reals(reals, *self.schedule.at(nimg))

    def progress(self, nimg):
        stage, alpha = self.schedule.at(nimg)
        return {"stage": stage, "alpha": alpha, "stage_resolution": self.net.stage_resolution(stage)}

    def describe(self) -> dict:
        return {"name": "pggan", "net": self.net.to_dict(),
                "schedule": {"stabilize_kimg": self.schedule.stabilize_kimg, "fade_kimg": self.schedule.fade_kimg}}

    @staticmethod
    def generator(net: dict) -> nn.Module:
        from models.pggan import Generator, PGGANConfig

        return Generator(PGGANConfig.from_dict(net))


    @staticmethod
    def presets() -> tuple[str, ...]:
        from models.pggan import PRESETS

        return ("auto", *PRESETS)  # auto builds as paper

    @staticmethod
    def net_keys() -> tuple[str, ...]:
        from models.pggan import PGGANConfig

        return _fields(PGGANConfig, _RUN_SETS | _BATCH_SETS)

class StyleGAN3Arch:
    """StyleGAN3-T/R generator with StyleGAN2's residual discriminator, set up as the reference's train.py
    sets --cfg stylegan3-t|r: channel_base 32768 / channel_max 512 for both nets (cfg.net's channel_base and
    channel_max are its --cbase/--cmax; R's generator doubles them), mapping depth 2, lr 0.0025 (D 0.002), EMA
    batch * 10 / 32 kimg, magnitude EMA half-life 20 kimg, no path-length regularization or style mixing,
    and for R the discriminator's input blurred (sigma 10, fading to 0 over batch * 200 / 32 kimg).

    The reference makes --gamma and --batch mandatory: the defaults here are FAMILY_DEFAULTS' StyleGAN3 row.
    As in the reference's loss, G's running statistics (w_avg, magnitude EMAs) move in D's pass over fakes.
    R's blur runs in discriminate(), before ADA's augmentation (the reference blurs, then augments), and R1's
    gradient is taken on the reals before both (as the reference's).
    """

    stats_in_d_step = True

    def __init__(self, cfg):
        from models.stylegan2 import Discriminator, StyleGAN2Config
        from models.stylegan3 import Generator, StyleGAN3Config, preset

        if cfg.preset != "auto":
            raise ValueError(f"{cfg.arch} has one preset, auto (the reference's --cfg {cfg.arch}), not {cfg.preset!r}")
        family = _Defaults(cfg)
        self.batch = family.batch
        net = dict(cfg.net)
        cbase, cmax = net.pop("channel_base", 32768), net.pop("channel_max", 512)
        mbstd = net.pop("mbstd_group", 4)
        # A network file (transfer learning) may record G widths off the --cfg rule: g_channel_base/g_channel_max.
        g_widths = {k[2:]: net.pop(k) for k in ("g_channel_base", "g_channel_max") if k in net}
        g_keys = {f.name for f in dataclasses.fields(StyleGAN3Config)}
        d_keys = {f.name for f in dataclasses.fields(StyleGAN2Config)} - g_keys | {"conv_clamp", "num_fp16_res"}
        unknown = sorted(set(net) - g_keys - d_keys)
        if unknown:
            raise ValueError(f"unknown {cfg.arch} network setting(s): {', '.join(unknown)}")
        g_net = preset(cfg.resolution, kind=cfg.arch, batch=self.batch, channel_base=cbase, channel_max=cmax)
        self.net = dataclasses.replace(g_net, **{k: v for k, v in net.items() if k in g_keys}, **g_widths)
        # The minibatch-std group must divide each pass's batch; the reference clamps it the same way.
        group = min(mbstd, _pass_batch(self.batch, cfg.batch_gpu))
        self.d_net = StyleGAN2Config(resolution=cfg.resolution, channels=self.net.channels, channel_base=cbase,
                                     channel_max=cmax, mbstd_group=group,
                                     **{k: v for k, v in net.items() if k in d_keys})
        self.G, self.D = Generator(self.net), Discriminator(self.d_net)
        self.lr = family("lr")
        self.d_lr = family("d_lr", given="lr")
        self.loss = family("loss")
        self.lazy_r1 = self.loss == "logistic"
        self.r1_gamma = family("r1_gamma")
        self.ema_kimg = family("ema_kimg")
        self.ema_rampup = cfg.ema_rampup  # training_loop.py's 0.05, which train.py keeps but for --resume
        self.z_dim = self.net.z_dim
        self.ada_target = family("ada_target")
        self.pl_weight = family("pl_weight")
        self.style_mixing = family("style_mixing")
        self.resolved = family.resolved
        r = cfg.arch == "stylegan3-r"
        # A run from a pretrained network does not blur, as the reference's --resume (blur_init_sigma 0).
        self.blur_init_sigma = 10.0 if r and not cfg.transfer_from else 0.0
        self.blur_fade_kimg = self.batch * 200 / 32 if r else 0.0

    def generate(self, G, z, nimg, update_stats=True, return_ws=False):
        ws = G.mapping(z, update_w_avg=update_stats)
        if self.style_mixing > 0:  # off unless asked for: the reference's StyleGAN3 configs do not mix
            cutoff = int(torch.empty([], dtype=torch.int64).random_(1, ws.shape[1]))  # drawn as StyleGAN2Arch's
            mix = float(torch.rand([])) < self.style_mixing
            z2 = torch.randn_like(z)
            if mix:
                ws = torch.cat([ws[:, :cutoff], G.mapping(z2, update_w_avg=False)[:, cutoff:]], 1)
        images = G.synthesis(ws, update_emas=update_stats)
        return (images, ws) if return_ws else images

    def blur_sigma(self, nimg: int) -> float:
        """R's discriminator blur: a pure function of images seen, so a resumed run blurs the same."""
        if self.blur_fade_kimg <= 0:
            return 0.0
        return max(1 - nimg / (self.blur_fade_kimg * 1e3), 0) * self.blur_init_sigma

    def discriminate(self, D, images, nimg, augment=None):
        from models.stylegan3 import blur

        images = blur(images, self.blur_sigma(nimg))  # blurred, then augmented: the reference's run_D
        return D(augment(images) if augment is not None else images)

    def prepare_reals(self, reals, nimg):
        return reals

    def progress(self, nimg):
        return {}

    def describe(self) -> dict:
        return {"name": self.net.kind, "net": self.net.to_dict(), "d_net": self.d_net.to_dict()}

    @staticmethod
    def generator(net: dict) -> nn.Module:
        from models.stylegan3 import Generator, StyleGAN3Config

        return Generator(StyleGAN3Config.from_dict(net))


    @staticmethod
    def presets() -> tuple[str, ...]:
        return ("auto",)  # the reference's --cfg stylegan3-t|r is one configuration each

    @staticmethod
    def net_keys() -> tuple[str, ...]:
        """G's config, D's (a StyleGAN2 one), and G widths off the --cfg rule (a network file's)."""
        from models.stylegan2 import StyleGAN2Config
        from models.stylegan3 import StyleGAN3Config

        g_keys = _fields(StyleGAN3Config, _RUN_SETS)
        return (*g_keys, *(k for k in _fields(StyleGAN2Config, _RUN_SETS) if k not in g_keys), "g_channel_base",
                "g_channel_max")

@dataclass(frozen=True)
class Family:
    """One architecture as the code around the training loop sees it: what builds it, and the traits that decide
    how it is planned, drawn and served (asked here by tasks/ and models.generate, never by comparing names)."""

    adapter: Callable[[Any], Arch]          # the training loop's glue, from a TrainConfig (mypy checks the protocol)
    generator: Callable[[dict], nn.Module]  # an untrained G from a recorded architecture's `net` (a checkpoint's)
    # Grows from 4x4 (models.pggan's stages): trained one stage per resolution, without ADA unless asked, and drawn
    # at a stage it has grown. Otherwise trained in cycles of train.cycle_kimg, with ADA (train.ada_target).
    progressive: bool
    truncation: bool  # a mapping network: truncation psi applies, and a morph interpolates in W
    # What a run may name beyond a setting's type (the settings check train.preset and train.net against these
    # before any data is read): its presets, `auto` first, and the keys its `net` may override.
    presets: Callable[[], tuple[str, ...]]
    net_keys: Callable[[], tuple[str, ...]]


# The one registry of architectures, by the names models.train_config.ARCH_NAMES lists (checked below).
ARCHS: dict[str, Family] = {
    "stylegan2": Family(StyleGAN2Arch, StyleGAN2Arch.generator, progressive=False, truncation=True,
                        presets=StyleGAN2Arch.presets, net_keys=StyleGAN2Arch.net_keys),
    "stylegan3-t": Family(StyleGAN3Arch, StyleGAN3Arch.generator, progressive=False, truncation=True,
                          presets=StyleGAN3Arch.presets, net_keys=StyleGAN3Arch.net_keys),
    "stylegan3-r": Family(StyleGAN3Arch, StyleGAN3Arch.generator, progressive=False, truncation=True,
                          presets=StyleGAN3Arch.presets, net_keys=StyleGAN3Arch.net_keys),
    "pggan": Family(PGGANArch, PGGANArch.generator, progressive=True, truncation=False,
                    presets=PGGANArch.presets, net_keys=PGGANArch.net_keys),
}


if tuple(ARCHS) != ARCH_NAMES or tuple(FAMILY_DEFAULTS) != ARCH_NAMES:  # the names' one check, at import
    raise ImportError(f"models.arch registers {tuple(ARCHS)}, models.train_config.ARCH_NAMES lists {ARCH_NAMES}")


def family(name: str) -> Family:
    """The registered architecture of this name (a recorded `arch["name"]`); ValueError for an unknown one."""
    found = ARCHS.get(name) if isinstance(name, str) else None
    if found is None:
        raise ValueError(f"unknown architecture {name!r}")
    return found


def build_arch(cfg) -> Arch:
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown arch {cfg.arch!r}: choose from {', '.join(ARCHS)}")
    return ARCHS[cfg.arch].adapter(cfg)
