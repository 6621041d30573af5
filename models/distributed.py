"""Data-parallel training over processes (torchrun), with the reference's approach: every process holds the
whole model, works on its share of each global batch, and gradients are averaged with one all-reduce per
optimizer step. No DistributedDataParallel wrapper: it does not support the double backward of R1 and the
gradient penalty, which is why stylegan2-ada-pytorch reduces gradients by hand too.

Everything here is a no-op in a single process, so the same Trainer runs with or without torchrun.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Iterable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: str = "cpu") -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment) and return this
    process's device: gloo on CPU, NCCL with one GPU per process (cuda:LOCAL_RANK) on CUDA."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over processes: one flat all-reduce (few large messages are
    faster than one per tensor)."""
    if not is_distributed():
        return
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])  # type: ignore[union-attr]  # kept: grad is not None
    dist.all_reduce(flat)
    flat /= world_size()
    # nan_to_num as the reference: one bad process must not poison every replica with NaN.
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))  # type: ignore[union-attr]  # kept: grad is not None


def average_buffers(module: torch.nn.Module) -> None:
    """Mean of floating-point buffers over processes (StyleGAN2's tracked w_avg follows every process's w)."""
    if not is_distributed():
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.flatten() for b in buffers])  # one message, as for the gradients
    dist.all_reduce(flat)
    flat /= world_size()
    for b, v in zip(buffers, flat.split([b.numel() for b in buffers])):
        b.copy_(v.view_as(b))


def mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over processes (itself when alone)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world_size()


def any_process(flag: bool, device: torch.device) -> bool:
    """True on every process when it is True on any (a preemption notice reaches one, all must stop)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order (on every process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
