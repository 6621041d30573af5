"""Per-architecture glue for the one training loop: build G/D, call them, schedule them.

A StyleGAN2 step is G(z) and D(x). The adapter also carries everything that is a pure function of the
number of images seen (a PGGAN's stage and fade-in alpha will be), so a resume restores it exactly.
"""
from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
from torch import nn


class Arch(Protocol):
    G: nn.Module
    D: nn.Module
    batch: int
    lr: float
    loss: str
    lazy_r1: bool
    r1_gamma: float
    ema_kimg: float
    z_dim: int

    def generate(self, G: nn.Module, z: torch.Tensor, nimg: int, update_stats: bool = True) -> torch.Tensor: ...
    def discriminate(self, D: nn.Module, images: torch.Tensor, nimg: int) -> torch.Tensor: ...
    def prepare_reals(self, reals: torch.Tensor, nimg: int) -> torch.Tensor: ...
    def progress(self, nimg: int) -> dict: ...
    def describe(self) -> dict: ...


def _pick(value, default, unset):
    return default if value == unset else value


class StyleGAN2Arch:
    def __init__(self, cfg):
        from models.stylegan2 import Discriminator, Generator, preset

        net, defaults = preset(cfg.resolution, gpus=1, kind=cfg.preset)
        self.batch = cfg.batch or defaults.minibatch
        # The minibatch-std group must divide the batch; the reference clamps it the same way.
        net = dataclasses.replace(net, mbstd_group=min(net.mbstd_group, self.batch), **cfg.net)
        self.net = net
        self.G, self.D = Generator(net), Discriminator(net)
        self.lr = cfg.lr or defaults.lr
        self.loss = cfg.loss or "logistic"
        self.lazy_r1 = self.loss == "logistic"
        # 'auto' scales gamma and EMA with the minibatch, so recompute them for an overridden batch.
        auto = cfg.preset == "auto"
        gamma = 0.0002 * cfg.resolution ** 2 / self.batch if auto else defaults.r1_gamma
        self.r1_gamma = _pick(cfg.r1_gamma, gamma, -1.0)
        self.ema_kimg = _pick(cfg.ema_kimg, self.batch * 10 / 32 if auto else defaults.ema_kimg, -1.0)
        self.z_dim = net.z_dim

    def generate(self, G, z, nimg, update_stats=True):
        # w_avg (the truncation centre) follows G's own training step only, as in the reference.
        return G(z, update_w_avg=update_stats)

    def discriminate(self, D, images, nimg):
        return D(images)

    def prepare_reals(self, reals, nimg):
        return reals

    def progress(self, nimg):
        return {}

    def describe(self) -> dict:
        return {"name": "stylegan2", "net": self.net.to_dict()}


def build_arch(cfg) -> Arch:
    if cfg.arch == "stylegan2":
        return StyleGAN2Arch(cfg)
    raise ValueError(f"unknown arch {cfg.arch!r}: this version trains stylegan2 (PGGAN is not built yet)")
