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


def _pass_batch(batch: int, batch_gpu: int) -> int:
    """Images in one forward pass of a process: batch_gpu (gradient accumulation, checked by the trainer), else its
    whole share of the global batch split over torchrun's processes."""
    return batch_gpu or max(batch // world_size(), 1)


def _pick(value, default, unset):
    return default if value == unset else value


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
        self.batch = cfg.batch or defaults.minibatch
        # The minibatch-std group must divide each pass's batch; the reference clamps it the same way (its layer takes
        # min(group, batch_gpu)).
        net = dataclasses.replace(net, mbstd_group=min(net.mbstd_group, _pass_batch(self.batch, cfg.batch_gpu)),
                                  **cfg.net)
        self.net = net
        self.G, self.D = Generator(net), Discriminator(net)
        self.lr = cfg.lr or defaults.lr
        self.d_lr = self.lr
        self.loss = cfg.loss or "logistic"
        self.lazy_r1 = self.loss == "logistic"
        # 'auto' scales gamma and EMA with the minibatch, so recompute them for an overridden batch.
        auto = cfg.preset == "auto"
        gamma = 0.0002 * cfg.resolution ** 2 / self.batch if auto else defaults.r1_gamma
        self.r1_gamma = _pick(cfg.r1_gamma, gamma, -1.0)
        self.ema_kimg = _pick(cfg.ema_kimg, self.batch * 10 / 32 if auto else defaults.ema_kimg, -1.0)
        # The reference ramps G_ema up in its auto and cifar configs only (cfg_specs' ramp).
        self.ema_rampup = cfg.ema_rampup if defaults.ema_rampup else 0.0
        self.z_dim = net.z_dim
        self.ada_target = _pick(cfg.ada_target, 0.6, -1.0)
        # The reference's StyleGAN2Loss defaults (off in its cifar config only).
        self.pl_weight = _pick(cfg.pl_weight, 2.0, -1.0)
        self.style_mixing = _pick(cfg.style_mixing, 0.9, -1.0)

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
        from models.pggan import Discriminator, Generator, GrowthSchedule, paper_minibatch, preset

        kind = "paper" if cfg.preset == "auto" else cfg.preset
        net, defaults = preset(cfg.resolution, kind=kind)
        self.batch = cfg.batch or paper_minibatch(cfg.resolution)
        # Minibatch-std groups must divide each pass's batch: the largest of at most the preset's that does.
        local = _pass_batch(self.batch, cfg.batch_gpu)
        group = next(g for g in range(min(net.mbstd_group, local), 0, -1) if local % g == 0)
        net = dataclasses.replace(net, mbstd_group=group, **cfg.net)
        self.net = net
        self.G, self.D = Generator(net), Discriminator(net)
        self.lr = cfg.lr or defaults.lr
        self.d_lr = self.lr
        self.loss = cfg.loss or defaults.loss
        self.lazy_r1 = self.loss == "logistic"
        self.r1_gamma = _pick(cfg.r1_gamma, 10.0, -1.0)
        self.ema_kimg = _pick(cfg.ema_kimg, defaults.ema_kimg(self.batch), -1.0)
        self.ema_rampup = 0.0  # the paper's G_ema: beta 0.999 from the first step
        self.z_dim = net.z_dim
        self.ada_target = _pick(cfg.ada_target, 0.0, -1.0)  # the paper trains without augmentation
        self.pl_weight = self.style_mixing = 0.0  # StyleGAN2's regularizers need its mapping network
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

    The reference makes --gamma and --batch mandatory. Defaults here: R1 gamma resolution^2 / 32768 (the
    values of its recommended configs: 0.5 at 128, 2 at 256, 8 at 512, 32 at 1024) and the StyleGAN2 'auto'
    minibatch (32 up to 128x128, halved per doubling above; train.batch_gpu trains a larger one in less memory).
    As in the reference's loss, G's running statistics (w_avg, magnitude EMAs) move in D's pass over fakes.
    R's blur runs in discriminate(), before ADA's augmentation (the reference blurs, then augments), and R1's
    gradient is taken on the reals before both (as the reference's).
    """

    stats_in_d_step = True

    def __init__(self, cfg):
        from models.stylegan2 import Discriminator, StyleGAN2Config
        from models.stylegan2 import preset as sg2_preset
        from models.stylegan3 import Generator, StyleGAN3Config, preset

        if cfg.preset != "auto":
            raise ValueError(f"{cfg.arch} has one preset, auto (the reference's --cfg {cfg.arch}), not {cfg.preset!r}")
        self.batch = cfg.batch or sg2_preset(cfg.resolution, gpus=world_size())[1].minibatch
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
        self.lr = cfg.lr or 0.0025
        self.d_lr = cfg.lr or 0.002  # train.py's --dlr default; its --glr for StyleGAN3 is 0.0025
        self.loss = cfg.loss or "logistic"
        self.lazy_r1 = self.loss == "logistic"
        self.r1_gamma = _pick(cfg.r1_gamma, cfg.resolution ** 2 / 32768, -1.0)
        self.ema_kimg = _pick(cfg.ema_kimg, self.batch * 10 / 32, -1.0)
        self.ema_rampup = cfg.ema_rampup  # training_loop.py's 0.05, which train.py keeps but for --resume
        self.z_dim = self.net.z_dim
        self.ada_target = _pick(cfg.ada_target, 0.6, -1.0)
        self.pl_weight = _pick(cfg.pl_weight, 0.0, -1.0)
        self.style_mixing = _pick(cfg.style_mixing, 0.0, -1.0)
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


# The one list of architectures (tasks.common.settings.Arch repeats the names as a Literal for pydantic; a test
# ties them).
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
