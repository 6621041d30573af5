"""Starting a run from a pretrained network (transfer learning): read the file, say what architecture it
records, and freeze the discriminator's first layers (Freeze-D).

A network file is one of:
- a ganflow checkpoint (RUN/checkpoints/ckpt-*.pt: G, D, G_ema, arch, optimizers, ...),
- RUN/best.pt (G_ema and arch only: no discriminator),
- the output of `ganflow import` (G, D, G_ema, arch, format "ganflow-network-1"),
  all read with torch.load(weights_only=True); or
- an NVIDIA network pickle (.pkl), read by models.network_pickle, which never runs anything from it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from models.checkpoint import load_checkpoint

# Net settings that change how a network runs or trains, not its weights: they stay the run's own
# (the minibatch-std group follows the batch; fp16/channels-last/fused modconv are speed switches; a
# StyleGAN3's magnitude EMA decay is set from the batch by its training config).
RUNTIME_KEYS = frozenset({"mbstd_group", "fused_modconv", "channels_last", "num_fp16_res", "magnitude_ema_beta"})
PICKLE_SUFFIXES = (".pkl", ".pkl.gz")
TORCH_SUFFIXES = (".pt", ".pth")


class TransferError(ValueError):
    """The file is not a network ganflow can start from, or the run's settings contradict it."""


@dataclass
class Networks:
    G: dict | None       # generator state dict; None in a best.pt (G starts as G_ema)
    D: dict | None       # discriminator state dict; None in a best.pt (D starts from random weights)
    G_ema: dict          # the averaged generator: what is sampled and evaluated
    arch: dict           # {"name", "net", ...}: the architecture these state dicts belong to


def load_networks(path: str | Path, mmap: bool = False, allow_nonfinite: bool = False) -> Networks:
    """The networks and architecture record of a network file (see the module docstring). With mmap, a .pt's
    tensors stay on disk until touched: cheap when only the record is wanted. Loaded whole (not mmap), weights
    holding NaN or inf are a TransferError unless allow_nonfinite (train.allow_nonfinite, --allow-nonfinite)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no network file at {path}")
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        state = _import_pickle(path, allow_nonfinite)
    elif path.suffix.lower() in TORCH_SUFFIXES:
        try:
            state = load_checkpoint(path, mmap=mmap)
        except Exception as e:  # a torn file, not a torch file, or pickled classes that weights_only refuses
            raise TransferError(f"{path} does not load as a ganflow network file "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    else:
        raise TransferError(f"{path}: a network file is a ganflow .pt (a checkpoint, best.pt or `ganflow import`'s "
                            f"output) or an NVIDIA .pkl, not {path.suffix or 'a file without suffix'}")
    if not isinstance(state, dict) or not isinstance(state.get("arch"), dict) or "G_ema" not in state:
        raise TransferError(f"{path} holds no networks with their architecture (expected G_ema and arch, as "
                            "ganflow's checkpoints, best.pt and `ganflow import` write)")
    nets = Networks(G=state.get("G"), D=state.get("D"), G_ema=state["G_ema"], arch=state["arch"])
    if not mmap and not allow_nonfinite:
        from models.nvidia_arch import nonfinite

        bad = next(filter(None, (nonfinite(sd, k) for k, sd in (("G", nets.G), ("D", nets.D), ("G_ema", nets.G_ema))
                                 if isinstance(sd, dict))), None)
        if bad:
            raise TransferError(f"{path}: weights hold NaN or inf ({bad}): a run started from them trains on NaN; "
                                "refused (--allow-nonfinite, train.allow_nonfinite, starts from them anyway)")
    return nets


def _import_pickle(path: Path, allow_nonfinite: bool = False) -> dict:
    try:
        from models.network_pickle import NetworkPickleError, import_network_pickle
    except ImportError:
        raise TransferError(f"{path}: reading NVIDIA network pickles needs models/network_pickle.py "
                            "(`ganflow import`), which this installation lacks") from None
    try:
        return import_network_pickle(path, allow_nonfinite=allow_nonfinite)
    except NetworkPickleError as e:
        raise TransferError(f"{path}: {e}") from None


# A StyleGAN3 run's cfg.net (models.arch.StyleGAN3Arch): channel_base/channel_max are the reference's --cbase/
# --cmax, the discriminator's widths (R's generator doubles them; g_channel_base/max say otherwise); the other
# keys go to G, and these to D.
_SG3_D_KEYS = ("mbstd_channels", "d_architecture", "resample_filter")


def arch_settings(arch: dict) -> tuple[str, int, dict]:
    """(family, resolution, net) that a TrainConfig needs to rebuild this recorded architecture: the recorded
    net without the run-time keys (those stay the new run's); for a StyleGAN3 with its discriminator's record
    (d_net), in the form StyleGAN3Arch reads. Trainer.start_from checks that what was built is the record."""
    try:
        name, net = arch["name"], arch["net"]
        resolution = int(net["resolution"])
    except (KeyError, TypeError, ValueError):
        raise TransferError(f"the architecture record {arch!r} names no family and resolution") from None
    net = {k: v for k, v in net.items() if k not in RUNTIME_KEYS}
    d_net = arch.get("d_net")
    if name.startswith("stylegan3") and isinstance(d_net, dict):
        g_widths = {f"g_{k}": net[k] for k in ("channel_base", "channel_max")
                    if net[k] != d_net[k] * (2 if name == "stylegan3-r" else 1)}
        net.update({k: d_net[k] for k in _SG3_D_KEYS if k in d_net}, **g_widths,
                   channel_base=d_net["channel_base"], channel_max=d_net["channel_max"])
    return name, resolution, net


def arch_differences(built: dict, recorded: dict) -> list[str]:
    """'part.key (file X, built Y)' for every architecture setting (not a run-time one) in which the networks a
    run built differ from a file's record: weights that load by shape can still run differently."""
    out = []
    for part in ("net", "d_net"):
        want, have = recorded.get(part), built.get(part)
        if not isinstance(want, dict):
            continue
        have = have if isinstance(have, dict) else built.get("net", {})  # one config for G and D
        out += [f"{part}.{k} (file {v}, built {have.get(k)})" for k, v in sorted(want.items())
                if k not in RUNTIME_KEYS and have.get(k) != v]
    if built.get("name") != recorded.get("name"):
        out.insert(0, f"name (file {recorded.get('name')}, built {built.get('name')})")
    return out


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes; remembered per (path, size, mtime) within a process, since a run's flow
    and its stage tasks ask for the same large file."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


# ------------------------------------------------------------------------------------------- Freeze-D

# Layers of a StyleGAN discriminator block, in the order the reference counts them (DiscriminatorBlock's
# trainable_gen: fromrgb of the first block, conv0, conv1, then the resnet skip).
_BLOCK_LAYERS = ("fromrgb", "conv0", "conv1", "skip")


def discriminator_layers(D: nn.Module) -> list[tuple[str, nn.Module]]:
    """D's layers as stylegan2-ada-pytorch's --freezed counts them: the blocks from the image's resolution
    down to 8x8, each fromrgb (first block only), conv0, conv1, skip (resnet); the 4x4 epilogue is never
    counted, so it always trains. A 256² resnet D has 4 + 5 x 3 = 19 such layers."""
    resolutions = getattr(D, "block_resolutions", None)
    if resolutions is None:
        raise TransferError(f"freeze_d works on a StyleGAN discriminator, not on {type(D).__name__} "
                            "(a PGGAN's D changes with its growth stage)")
    layers = []
    for res in resolutions:
        block = getattr(D, f"b{res}")
        layers += [(f"b{res}.{name}", getattr(block, name)) for name in _BLOCK_LAYERS if hasattr(block, name)]
    return layers


def freeze_discriminator(D: nn.Module, n: int) -> list[str]:
    """Freeze D's first n layers (Freeze-D, Mo et al. 2020, as the reference's --freezed): their parameters
    stop requiring gradients, so no optimizer moves them (the trainer leaves them out of Adam). Gradients
    still flow through them to the input, which R1 needs. Returns the names of the frozen parameters."""
    if n < 0:
        raise TransferError(f"freeze_d must be >= 0, not {n}")
    if n == 0:
        return []
    layers = discriminator_layers(D)
    if n > len(layers):
        raise TransferError(f"freeze_d {n} is more than this discriminator's {len(layers)} layers "
                            f"({layers[0][0]} ... {layers[-1][0]}; its 4x4 epilogue always trains)")
    frozen = []
    for name, layer in layers[:n]:
        for pname, p in layer.named_parameters():
            p.requires_grad_(False)
            frozen.append(f"{name}.{pname}")
    return frozen
