"""The layers both StyleGAN generators share: the equalized-learning-rate linear layer, the mapping network
(z -> ws, with the tracked average w for truncation) and the precision helpers of their fp32 layers.

Parameter and buffer names are the references' (`fc0.weight`, `affine.bias`, `w_avg`), so NVIDIA's state
dicts load by name (models.network_pickle), and each layer draws its initial weights as the reference of its
generator does, so the same seed gives the same networks.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from models import ops

Tensor = torch.Tensor


def full_precision(x: Tensor):
    """A context that turns autocast off for x's device (the reference's fp32 layers under AMP)."""
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def precision(use_fp16: bool, x: Tensor):
    """Autocast as the caller set it for a layer that may run in half precision, else full_precision."""
    return contextlib.nullcontext() if use_fp16 else full_precision(x)


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate and a learning-rate multiplier (the references'
    FullyConnectedLayer).

    Weights are stored as N(0, 1) / lr_mul and scaled by lr_mul / sqrt(in) at run time, so Adam's step is
    the same for every layer and lr_mul times smaller in effect. bias_init (a number, or one per output) is the
    effective initial bias. weight_init scales the initial weights (StyleGAN3's input affine starts at 0).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_mul: float = 1.0, bias_init: float | Sequence[float] = 0.0, weight_init: float | None = None):
        super().__init__()
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        w = torch.randn([out_features, in_features])
        # StyleGAN2's reference divides by lr_mul, StyleGAN3's multiplies by weight_init / lr_mul: the two differ
        # in the last bit, and each generator keeps its reference's (None: StyleGAN2's).
        self.weight = nn.Parameter(w / lr_mul if weight_init is None else w * (weight_init / lr_mul))
        init = np.broadcast_to(np.asarray(bias_init, dtype=np.float32), [out_features])
        self.bias = nn.Parameter(torch.from_numpy(init / np.float32(lr_mul))) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return ops.bias_act(x.matmul(w.t()), b, act=self.activation)


class MappingNetwork(nn.Module):
    """z -> ws: 2nd-moment normalization and an MLP; tracks the average w and applies truncation."""

    w_avg: Tensor  # a buffer (register_buffer): typed for mypy

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995, weight_init: float | None = None):
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, w_dim, num_ws, num_layers
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        for i in range(num_layers):
            setattr(self, f"fc{i}", EqualLinear(features[i], features[i + 1], activation="lrelu", lr_mul=lr_mul,
                                                weight_init=weight_init))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                update_w_avg: bool | None = None) -> Tensor:
        """[N, z_dim] -> ws [N, num_ws, w_dim]. update_w_avg (default: in training mode) moves w_avg towards this
        batch's mean w by 1 - w_avg_beta. truncation_psi < 1 pulls w towards w_avg (for the first
        truncation_cutoff ws only, if given)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [N, {self.z_dim}], not {list(z.shape)}")
        with full_precision(z):  # fp32 under autocast, as the references' mapping
            x = ops.normalize_2nd_moment(z.to(torch.float32))
            for i in range(self.num_layers):
                x = getattr(self, f"fc{i}")(x)
        update = self.training if update_w_avg is None else update_w_avg  # False for style-mixing's 2nd z
        if update:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x
