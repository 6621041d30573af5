"""ganflow architectures from the init kwargs recorded in NVIDIA's network pickles, and their tensors by name.

A persistent network records the kwargs it was built with (models.pickle_records.Persistent); kwargs it was
not given take the defaults of the reference's signatures, which differ between the two repositories
(stylegan2-ada-pytorch's training/networks.py: conv_clamp None, num_fp16_res 0, w_avg_beta 0.995;
stylegan3's training/networks_stylegan2.py: 256, 4, 0.998). Every kwarg is either mapped to a ganflow
setting, known to change only training speed (fp16_channels_last, freeze_layers), or must equal the value
ganflow implements; anything else is refused by name, so an import never silently changes the network.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch

from models.pickle_records import NetworkPickleError, Persistent

_G_POSITIONAL = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")
_D_POSITIONAL = ("c_dim", "img_resolution", "img_channels", "architecture", "channel_base", "channel_max",
                 "num_fp16_res", "conv_clamp", "cmap_dim", "block_kwargs", "mapping_kwargs", "epilogue_kwargs")

# Defaults of the reference's signatures (None = the same in both repositories).
_ADA, _SG3 = "stylegan2-ada-pytorch", "stylegan3"
_SG2_DEFAULTS: dict[str, dict[str, Any]] = {
    _ADA: dict(num_layers=8, lr_multiplier=0.01, w_avg_beta=0.995, channel_base=32768, channel_max=512,
               num_fp16_res=0, conv_clamp=None, fused_modconv_default=None, d_num_fp16_res=0, d_conv_clamp=None),
    _SG3: dict(num_layers=8, lr_multiplier=0.01, w_avg_beta=0.998, channel_base=32768, channel_max=512,
               num_fp16_res=4, conv_clamp=256, fused_modconv_default=True, d_num_fp16_res=4, d_conv_clamp=256),
}
# Kwargs that only change speed or training, not the function the network computes.
_IGNORED = {"fp16_channels_last", "freeze_layers", "channels_last"}


def _kwargs(rec: Persistent, positional: tuple[str, ...]) -> dict:
    if len(rec.init_args) > len(positional):
        raise NetworkPickleError(f"{rec.class_name} was built with {len(rec.init_args)} positional arguments")
    kw = dict(zip(positional, rec.init_args))
    for k, v in rec.init_kwargs.items():
        if k in kw:
            raise NetworkPickleError(f"{rec.class_name} got {k} twice")
        kw[k] = v
    return kw


class _Kwargs:
    """A kwargs dict consumed key by key; leftovers are refused by name."""

    def __init__(self, where: str, d: dict | None):
        if d is not None and not isinstance(d, dict):
            raise NetworkPickleError(f"{where} is a {type(d).__name__}, not kwargs")
        self.where, self.d = where, dict(d or {})

    def take(self, key: str, default=None):
        return self.d.pop(key, default)

    def require(self, key: str, supported, default):
        """The value (or the reference default) must be one ganflow implements."""
        v = self.d.pop(key, default)
        ok = v in supported if isinstance(supported, (tuple, list, set)) else v == supported
        if not ok:
            raise NetworkPickleError(f"{self.where}.{key}={v!r} is not supported (ganflow implements {supported!r})")
        return v

    def done(self) -> None:
        left = sorted(k for k in self.d if k not in _IGNORED)
        if left:
            raise NetworkPickleError(f"unknown kwargs {', '.join(f'{self.where}.{k}' for k in left)}")


def _flavor(G: Persistent) -> str:
    """Which repository's networks_stylegan2 built this StyleGAN2 (their defaults differ): stylegan3's
    SynthesisBlock records fused_modconv_default, stylegan2-ada-pytorch's does not."""
    syn = G.child("synthesis")
    blocks = [m for m in syn.modules.values() if m is not None] if syn else []
    return _SG3 if any("fused_modconv_default" in b.attrs for b in blocks) else _ADA


def family(G: Persistent) -> str:
    """'stylegan2' or 'stylegan3' from the generator's structure (the module name is not in the pickle)."""
    syn = G.child("synthesis")
    if G.class_name != "Generator" or syn is None:
        raise NetworkPickleError(f"G is a {G.class_name} without a synthesis network, not a StyleGAN generator")
    if "input" in syn.modules:
        return "stylegan3"
    if "b4" in syn.modules:
        return "stylegan2"
    raise NetworkPickleError("G's synthesis network is neither StyleGAN2's (b4...) nor StyleGAN3's (input, L0...)")


def _generator_top(G: Persistent) -> tuple[dict, _Kwargs, _Kwargs]:
    kw = _Kwargs("G", _kwargs(G, _G_POSITIONAL))
    c_dim = kw.take("c_dim", 0)
    if c_dim:
        raise NetworkPickleError(f"a conditional generator (c_dim {c_dim}): ganflow's networks are unconditional")
    top = {"z_dim": kw.take("z_dim"), "w_dim": kw.take("w_dim"), "resolution": kw.take("img_resolution"),
           "channels": kw.take("img_channels")}
    missing = [k for k, v in top.items() if v is None]
    if missing:
        raise NetworkPickleError(f"G's init kwargs lack {', '.join(missing)}")
    mapping = _Kwargs("G.mapping_kwargs", kw.take("mapping_kwargs"))
    synthesis = _Kwargs("G.synthesis_kwargs", kw.take("synthesis_kwargs"))
    synthesis.d.update(kw.d)  # stylegan3's generators take the synthesis kwargs flat
    return top, mapping, synthesis


def _mapping_fields(m: _Kwargs, w_dim: int, defaults: dict) -> dict:
    beta = m.take("w_avg_beta", defaults["w_avg_beta"])
    out = {"mapping_layers": _int(m.take("num_layers", defaults["num_layers"])),
           "mapping_lr": _float(m.take("lr_multiplier", defaults["lr_multiplier"])),
           "w_avg_beta": 1.0 if beta is None else _float(beta)}  # None (not tracked) = a w_avg that never moves
    m.require("layer_features", (None, w_dim), None)
    m.require("activation", "lrelu", "lrelu")
    m.take("embed_features")  # used only with labels (c_dim > 0, refused above)
    m.done()
    return out


def _clamp(v) -> float | None:
    return None if v is None else _float(v)


def _bool(v) -> bool:
    if not isinstance(v, (bool, numbers.Integral)) or v not in (0, 1):
        raise NetworkPickleError(f"a recorded value {str(v)[:40]!r} that is not true or false")
    return bool(v)


def _taps(v) -> list:
    if not isinstance(v, (list, tuple)):
        raise NetworkPickleError(f"a recorded resample filter {str(v)[:40]!r} that is not a list of numbers")
    return list(v)


def _int(v) -> int:
    """A recorded integer: an int (numpy's too) or a float without a fraction; never a bool, text or inf."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or \
            (not isinstance(v, numbers.Integral) and not (math.isfinite(v) and float(v).is_integer())):
        raise NetworkPickleError(f"a recorded value {str(v)[:40]!r} that is not an integer")
    return int(float(v)) if not isinstance(v, numbers.Integral) else int(v)


def _float(v) -> float:
    """A recorded number: finite (an inf learning-rate multiplier would make every weight inf)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise NetworkPickleError(f"a recorded value {str(v)[:40]!r} that is not a finite number")
    return float(v)


# What a recorded architecture may say, checked before any network is built (an allocation follows from these):
# field → (lowest, highest) or a rule. Widths and resolutions as ganflow trains them (models.arch, TrainSettings).
_POW2 = "pow2"
BOUNDS: dict[str, tuple] = {
    "resolution": (_POW2, 4, 1024), "channels": (1, 4), "z_dim": (1, 4096), "w_dim": (1, 4096),
    "channel_base": (1, 1 << 20), "channel_max": (1, 4096), "num_fp16_res": (0, 10), "mapping_layers": (1, 32),
    "mapping_lr": (1e-6, 100.0), "w_avg_beta": (0.0, 1.0), "conv_clamp": (1e-6, 1e6), "mbstd_group": (0, 1024),
    "mbstd_channels": (1, 64), "num_layers": (1, 64), "num_critical": (0, 64), "first_cutoff": (1e-6, 1e6),
    "first_stopband": (1e-6, 1e6), "last_stopband_rel": (1e-6, 1e6), "margin_size": (0, 256),
    "output_scale": (-1e6, 1e6), "conv_kernel": (1, 15), "filter_size": (1, 64), "lrelu_upsampling": (1, 16),
    "magnitude_ema_beta": (0.0, 1.0),
}


def check_fields(fields: dict, who: str) -> dict:
    """Every recorded field within BOUNDS, the resample filter 1 to 16 finite taps with a non-zero sum; else a
    NetworkPickleError naming the field, its value and the rule."""
    for key, value in fields.items():
        bound = BOUNDS.get(key)
        if bound is None or value is None:
            continue
        pow2 = bound[0] == _POW2
        lo, hi = bound[1:] if pow2 else bound
        if not lo <= value <= hi or (pow2 and value & (value - 1)):
            rule = f"a power of two from {lo} to {hi}" if pow2 else f"from {lo} to {hi}"
            raise NetworkPickleError(f"{who} records {key} {value!r}: not {rule}")
    taps = fields.get("resample_filter")
    if taps is not None:
        if not isinstance(taps, list) or not 1 <= len(taps) <= 16:
            raise NetworkPickleError(f"{who} records a resample filter of {len(taps) if isinstance(taps, list) else 0} "
                                     "taps: not 1 to 16")
        values = [_float(t) for t in taps]
        if abs(sum(values)) < 1e-8:
            raise NetworkPickleError(f"{who} records a resample filter {values} whose taps sum to 0")
    return fields


def stylegan2_config(G: Persistent) -> dict:
    """ganflow StyleGAN2Config fields of the generator (its D fields come from stylegan2_d_fields)."""
    defaults = _SG2_DEFAULTS[_flavor(G)]
    top, mapping, syn = _generator_top(G)
    out = {"resolution": _int(top["resolution"]), "channels": _int(top["channels"]), "z_dim": _int(top["z_dim"]),
           "w_dim": _int(top["w_dim"]), **_mapping_fields(mapping, top["w_dim"], defaults),
           "channel_base": _int(syn.take("channel_base", defaults["channel_base"])),
           "channel_max": _int(syn.take("channel_max", defaults["channel_max"])),
           "num_fp16_res": _int(syn.take("num_fp16_res", defaults["num_fp16_res"])),
           "conv_clamp": _clamp(syn.take("conv_clamp", defaults["conv_clamp"])),
           "resample_filter": _taps(syn.take("resample_filter", [1, 3, 3, 1]))}
    syn.require("architecture", "skip", "skip")
    syn.require("use_noise", True, True)
    syn.require("activation", "lrelu", "lrelu")
    syn.require("kernel_size", 3, 3)
    fused = syn.take("fused_modconv_default", defaults["fused_modconv_default"])
    out["fused_modconv"] = None if fused in (None, "inference_only") else bool(fused)
    syn.done()
    check_fields(out, "G")
    _check_recorded(G, "G", {"mapping": {"w_avg_beta": out["w_avg_beta"], "num_layers": out["mapping_layers"]},
                             "synthesis.b4.conv1": {"conv_clamp": out["conv_clamp"]}})
    return out


def stylegan2_d_fields(D: Persistent, flavor: str) -> dict:
    """StyleGAN2Config fields of an NVIDIA residual discriminator."""
    defaults = _SG2_DEFAULTS[flavor]
    if D.class_name != "Discriminator":
        raise NetworkPickleError(f"D is a {D.class_name}, not a StyleGAN2 Discriminator")
    kw = _Kwargs("D", _kwargs(D, _D_POSITIONAL))
    if kw.take("c_dim", 0):
        raise NetworkPickleError("a conditional discriminator (c_dim > 0): ganflow's networks are unconditional")
    out = {"resolution": _int(kw.take("img_resolution")), "channels": _int(kw.take("img_channels")),
           "d_architecture": kw.require("architecture", ("resnet", "orig"), "resnet"),
           "channel_base": _int(kw.take("channel_base", defaults["channel_base"])),
           "channel_max": _int(kw.take("channel_max", defaults["channel_max"])),
           "num_fp16_res": _int(kw.take("num_fp16_res", defaults["d_num_fp16_res"])),
           "conv_clamp": _clamp(kw.take("conv_clamp", defaults["d_conv_clamp"]))}
    kw.take("cmap_dim")
    kw.take("mapping_kwargs")  # the label mapping network, unused without labels
    block = _Kwargs("D.block_kwargs", kw.take("block_kwargs"))
    block.require("activation", "lrelu", "lrelu")
    out["resample_filter"] = _taps(block.take("resample_filter", [1, 3, 3, 1]))
    block.done()
    epi = _Kwargs("D.epilogue_kwargs", kw.take("epilogue_kwargs"))
    group = epi.take("mbstd_group_size", 4)
    out["mbstd_group"] = 0 if group is None else _int(group)  # None = the whole batch
    out["mbstd_channels"] = _int(epi.take("mbstd_num_channels", 1))
    epi.require("activation", "lrelu", "lrelu")
    epi.done()
    kw.done()
    check_fields(out, "D")
    _check_recorded(D, "D", {"b4.conv": {"conv_clamp": out["conv_clamp"]}})
    return out


def _check_recorded(rec: Persistent, who: str, expected: dict[str, dict]) -> None:
    """The layers record the values they run with (conv_clamp, w_avg_beta, ...): the config derived from the
    kwargs and the reference's defaults must agree with them, or the import would change the network."""
    for path, values in expected.items():
        node = rec
        for part in path.split(".") if path else []:
            node = node.child(part) if node is not None else None
        if node is None:
            continue
        for attr, want in values.items():
            if attr in node.attrs:
                have = node.attrs[attr]
                have = have.item() if hasattr(have, "item") else have
                if attr == "w_avg_beta" and have is None:
                    have = 1.0  # the reference's "not tracked", ganflow's beta 1
                same = (have is None and want is None) or (
                    have is not None and want is not None and math.isclose(float(have), float(want), rel_tol=1e-9))
                if not same:
                    raise NetworkPickleError(f"{who}'s kwargs give {attr} {want} but {who}.{path} records {have}")


def architecture(G: Persistent, D: Persistent) -> tuple[dict, Callable[[], torch.nn.Module],
                                                         Callable[[], torch.nn.Module]]:
    """(arch entry for a ganflow network file, G builder, D builder) from the recorded kwargs."""
    from models.stylegan2 import Discriminator, StyleGAN2Config

    fam = family(G)
    flavor = _flavor(G) if fam == "stylegan2" else _SG3
    d_fields = stylegan2_d_fields(D, flavor)
    if fam == "stylegan2":
        g_fields = stylegan2_config(G)
        for k in ("resolution", "channels", "channel_base", "channel_max", "conv_clamp", "resample_filter"):
            if g_fields[k] != d_fields[k]:
                raise NetworkPickleError(f"G and D differ in {k} (G {g_fields[k]}, D {d_fields[k]}): ganflow's "
                                         "StyleGAN2 shares one config between them")
        net = StyleGAN2Config.from_dict({**g_fields, **{k: v for k, v in d_fields.items() if k != "num_fp16_res"}})
        arch = {"name": "stylegan2", "net": net.to_dict()}
        from models.stylegan2 import Generator

        return arch, lambda: Generator(net), lambda: Discriminator(net)
    try:
        from models import stylegan3
    except ImportError:
        raise NetworkPickleError("a StyleGAN3 network, and this ganflow has no models/stylegan3.py") from None

    g_cfg = stylegan3.StyleGAN3Config(**stylegan3_config(G))
    d_cfg = StyleGAN2Config.from_dict(d_fields)
    if (d_cfg.resolution, d_cfg.channels) != (g_cfg.resolution, g_cfg.channels):
        raise NetworkPickleError(f"D is for {d_cfg.resolution}² x{d_cfg.channels}, G makes "
                                 f"{g_cfg.resolution}² x{g_cfg.channels}")
    arch = {"name": g_cfg.kind, "net": g_cfg.to_dict(), "d_net": d_cfg.to_dict()}
    return arch, lambda: stylegan3.Generator(g_cfg), lambda: Discriminator(d_cfg)


def stylegan3_config(G: Persistent) -> dict:
    """StyleGAN3Config fields from networks_stylegan3.Generator's kwargs (its defaults where absent)."""
    top, mapping, syn = _generator_top(G)
    defaults = {"num_layers": 2, "lr_multiplier": 0.01, "w_avg_beta": 0.998}
    out = {"resolution": _int(top["resolution"]), "channels": _int(top["channels"]), "z_dim": _int(top["z_dim"]),
           "w_dim": _int(top["w_dim"]), **_mapping_fields(mapping, top["w_dim"], defaults)}
    fields: tuple[tuple[str, Any, Callable[[Any], Any]], ...] = (
            ("channel_base", 32768, _int), ("channel_max", 512, _int), ("num_layers", 14, _int),
            ("num_critical", 2, _int), ("first_cutoff", 2, _float), ("first_stopband", 2 ** 2.1, _float),
            ("last_stopband_rel", 2 ** 0.3, _float), ("margin_size", 10, _int), ("output_scale", 0.25, _float),
            ("num_fp16_res", 4, _int), ("conv_kernel", 3, _int), ("filter_size", 6, _int),
            ("lrelu_upsampling", 2, _int), ("use_radial_filters", False, _bool),
            ("magnitude_ema_beta", 0.999, _float))
    for key, default, cast in fields:
        out[key] = cast(syn.take(key, default))
    out["conv_clamp"] = _clamp(syn.take("conv_clamp", 256))
    syn.done()
    check_fields(out, "G")
    recorded = {"mapping": {"w_avg_beta": out["w_avg_beta"], "num_layers": out["mapping_layers"]},
                "synthesis": {k: out[k] for k in ("num_layers", "num_critical", "margin_size", "output_scale")}}
    layers = G.child("synthesis").attrs.get("layer_names") or []  # type: ignore[union-attr]  # family() checked it
    if layers:
        recorded[f"synthesis.{layers[0]}"] = {k: out[k] for k in ("conv_clamp", "magnitude_ema_beta", "conv_kernel")}
    _check_recorded(G, "G", recorded)
    return out


# --------------------------------------------------------------------------- tensors


def check_sizes(build: Callable[[], torch.nn.Module], rec: Persistent, what: str) -> None:
    """Build the network on the meta device (no memory) and check every tensor it would allocate has a tensor of
    that shape in the file, and the parameter counts agree: what is then built for real is no larger than the
    file's own tensors, whatever the kwargs claimed."""
    with torch.device("meta"):
        module = build()
    ref = rec.state_dict()
    wrong = [f"{k} {list(v.shape)}" + (f" (file {list(ref[k].shape)})" if k in ref else " (not in the file)")
             for k, v in module.state_dict().items() if k not in ref or tuple(ref[k].shape) != tuple(v.shape)]
    if wrong:
        raise NetworkPickleError(f"{what}'s kwargs describe tensors the file does not hold: {', '.join(wrong[:3])}"
                                 f"{' ...' if len(wrong) > 3 else ''}")
    have, claimed = rec.num_params(), sum(p.numel() for p in module.parameters())
    if have != claimed:
        raise NetworkPickleError(f"{what}'s kwargs imply {claimed:,} parameters and the file holds {have:,}")


def nonfinite(state: dict[str, torch.Tensor], what: str) -> str | None:
    """'what.name' of the first tensor holding NaN or inf (and how many such tensors), or None."""
    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    return f"{what}.{bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "") if bad else None


def load_tensors(module: torch.nn.Module, rec: Persistent, what: str,
                 resample_filter: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Load rec's tensors into module by name and return module's state dict. Tensors the reference persists
    but ganflow recomputes (resampling filters and other fixed buffers) are dropped only when they hold the
    values ganflow derives (its own buffer of that name, or the config's resample filter); any other extra,
    missing or misshapen tensor is an error."""
    from models import ops

    fixed = ops.setup_filter(resample_filter) if resample_filter is not None else None
    ref = rec.state_dict()
    own = module.state_dict()
    buffers = dict(module.named_buffers())
    extra, mismatched = [], []
    for k, v in ref.items():
        if k in own:
            if tuple(own[k].shape) != tuple(v.shape):
                mismatched.append(f"{k} {list(v.shape)} (ganflow {list(own[k].shape)})")
        elif k in buffers and buffers[k].shape == v.shape and torch.allclose(buffers[k].float(), v.float(),
                                                                                  rtol=1e-5, atol=1e-6):
            continue  # a constant ganflow derives from the architecture (and it agrees)
        elif (k.rsplit(".", 1)[-1] == "resample_filter" and fixed is not None and fixed.shape == v.shape
              and torch.allclose(fixed.float(), v.float(), rtol=1e-5, atol=1e-6)):
            continue  # the reference keeps one per layer; ganflow's layers hold it unpersisted, or not at all
        else:
            extra.append(k)
    missing = [k for k in own if k not in ref]
    problems = []
    if mismatched:
        problems.append(f"shapes differ: {', '.join(mismatched[:3])}")
    if extra:
        problems.append(f"unexpected tensors {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    if missing:
        problems.append(f"missing tensors {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if problems:
        raise NetworkPickleError(f"{what} does not match the architecture its kwargs describe: {'; '.join(problems)}")
    module.load_state_dict({k: ref[k].to(own[k].dtype) for k in own})
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}

