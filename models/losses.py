"""GAN losses, each a named function of a few lines (as in rosinality/stylegan2-pytorch).

Logits are D's raw outputs. Regularizers take the real images with requires_grad set.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic loss for D: softplus(-D(x)) + softplus(D(G(z)))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


def d_r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1: squared gradient norm of D on reals (multiply by gamma/2 and the lazy interval)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3]).mean()


def d_wgan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, drift: float = 0.001) -> torch.Tensor:
    """WGAN critic loss with PGGAN's drift term keeping D(x) near zero."""
    return fake_logits.mean() - real_logits.mean() + drift * real_logits.square().mean()


def g_wgan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, **d_kwargs) -> torch.Tensor:
    """WGAN-GP: (||grad D(mix)|| - 1)^2 on random interpolates of real and fake (mix = lerp(real, fake, u), u
    uniform per image: the paper's code's direction, so the same draw gives the same mix)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mix = torch.lerp(real, fake, eps).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mix, **d_kwargs).sum(), mix, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def d_lsgan_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Least squares (the PGGAN seed found MSE stable where BCE collapsed): reals to 1, fakes to 0."""
    return 0.5 * ((real_logits - 1).square().mean() + fake_logits.square().mean())


def g_lsgan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (fake_logits - 1).square().mean()


def path_length_penalty(images: torch.Tensor, ws: torch.Tensor, mean_path_length: torch.Tensor,
                        decay: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleGAN2 path-length regularizer: returns (penalty, updated running mean of path lengths).

    The updated mean is not detached: the penalty's gradient includes its `decay` share of this batch, as
    NVIDIA's (TF and PyTorch) implementations; detach it before keeping it."""
    noise = torch.randn_like(images) / math.sqrt(images.shape[2] * images.shape[3])
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
    new_mean = mean_path_length.lerp(lengths.mean(), decay)
    return (lengths - new_mean).square().mean(), new_mean


LOSSES = {
    "logistic": (d_logistic_loss, g_nonsaturating_loss),
    "wgan": (d_wgan_loss, g_wgan_loss),
    "lsgan": (d_lsgan_loss, g_lsgan_loss),
}
