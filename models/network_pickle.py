"""Read NVIDIA's network pickles (stylegan2-ada-pytorch, stylegan3) without running anything from the file.

Their training loops pickle a dict {G, D, G_ema, augment_pipe, training_set_kwargs}; each network is a
`torch_utils.persistence` object whose pickle is `_reconstruct_persistent_obj(meta)`, meta holding the
*source code* of the network's module (exec'd by NVIDIA's loader), the class name and the object's state
(its __dict__: parameters, buffers, submodules, init kwargs). Here a restricted unpickler resolves only the
globals that rebuild tensors, numpy values and plain containers; the persistence reconstructor is replaced
by one that returns that state as a `Persistent` record (the source is never run, never even compiled);
any other global (os.system, builtins.eval, a TensorFlow-era dnnlib.tflib class...) stops the load with a
NetworkPickleError naming it.

`import_network_pickle(path)` turns such a file into ganflow's networks: the architecture from the recorded
init kwargs (models.nvidia_arch), the tensors loaded by name into ganflow's StyleGAN2 / StyleGAN3.
"""
from __future__ import annotations

import codecs
import collections
import gzip
import hashlib
import io
import math
import pickle
import re
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import nvidia_arch
from models.pickle_records import NetworkPickleError, Persistent

FORMAT = "ganflow-network-1"


# --------------------------------------------------------------------------- the restricted unpickler


def _reconstruct_persistent(meta) -> Persistent:
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj: keeps meta's state, drops its source."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise NetworkPickleError("a persistent object without the meta of torch_utils.persistence")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise NetworkPickleError(f"persistent {meta['class_name']} has no state dict")
    known = {"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "_init_args", "_init_kwargs"}
    modules = dict(state.get("_modules") or {})
    for name, m in modules.items():
        if m is not None and not isinstance(m, Persistent):
            raise NetworkPickleError(f"submodule {name!r} of {meta['class_name']} is a {type(m).__name__}, "
                                     "not a persistent network")
    return Persistent(
        class_name=meta["class_name"], init_args=tuple(state.get("_init_args") or ()),
        init_kwargs=dict(state.get("_init_kwargs") or {}), parameters=dict(state.get("_parameters") or {}),
        buffers=dict(state.get("_buffers") or {}), non_persistent=set(state.get("_non_persistent_buffers_set") or ()),
        modules=modules,
        attrs={k: v for k, v in state.items() if k not in known and not k.startswith("_")},
    )


def _load_storage(b: bytes):
    """torch.storage._load_from_bytes, with torch's safe unpickler (a storage is pickled as a legacy torch.save)."""
    if not isinstance(b, (bytes, bytearray)):
        raise NetworkPickleError("a tensor storage that is not bytes")
    try:
        with warnings.catch_warnings():  # torch's notes on odd streams: the error below says it in one line
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own text suggests weights_only=False, the one thing not to do with this file
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise NetworkPickleError(f"refusing to load {found.group(1)} (inside a tensor's storage)" if found else
                                 "a tensor storage that torch's weights_only loader refuses: not a network pickle "
                                 "of NVIDIA's code") from None


class _EasyDict(dict):
    """dnnlib.util.EasyDict's pickle (NEWOBJ + SETITEMS [+ BUILD]) read into a plain dict."""

    def __setstate__(self, state):
        if state:
            raise NetworkPickleError("an EasyDict with attribute state")


def _np_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise NetworkPickleError("a numpy array of Python objects")
    return dt


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise NetworkPickleError("a numpy array subclass")
    # numpy pickles an array as an empty one filled by __setstate__ from bytes in the file: a shape here that asks
    # for memory would allocate what the file never holds
    if not isinstance(shape, tuple) or len(shape) > 32 or \
            any(not isinstance(n, int) or n < 0 for n in shape) or math.prod(shape) > 1024:
        raise NetworkPickleError("a numpy array whose pickle asks for memory its bytes do not hold")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise NetworkPickleError("a numpy scalar that is not plain data")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _codecs_encode(s, encoding="utf-8"):  # protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1')
    if not isinstance(s, str) or encoding not in ("latin1", "latin-1"):
        raise NetworkPickleError("a _codecs.encode call that is not bytes")
    return codecs.encode(s, encoding)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _codecs_encode,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): np.ndarray,
}
for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_core, "_reconstruct")] = _np_reconstruct
    _ALLOWED[(_core, "scalar")] = _np_scalar


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        fn = _ALLOWED.get((module, name))
        if fn is not None:
            return fn
        where = f"{module}.{name}"
        if module.startswith("dnnlib.tflib"):
            raise NetworkPickleError(f"a TensorFlow-era pickle ({where}): ganflow reads the PyTorch pickles of "
                                     "stylegan2-ada-pytorch and stylegan3 (their legacy.py converts TensorFlow ones)")
        raise NetworkPickleError(f"refusing to load {where}: only tensors, numbers and plain containers are "
                                 "read from a network pickle")

    def persistent_load(self, pid):
        raise NetworkPickleError("a pickle with persistent ids (a torch.save file, not a network pickle?)")


def _plain(x):
    """EasyDicts and OrderedDicts as dicts, numpy scalars as Python numbers (recursively)."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    if isinstance(x, np.generic):
        return x.item()
    return x


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _json_like(x):
    """Only what weights_only loads and a user reads: strings, numbers, lists, dicts (anything else as text)."""
    if isinstance(x, dict):
        return {str(k): _json_like(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_like(v) for v in x]
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return repr(x)


# Memory follows the file, not its claims. A gzipped pickle of network weights (random-looking floats) shrinks
# by a few percent; one that inflates past this ratio (and past a floor for tiny files) is a bomb, stopped as
# the bytes come out. No network ganflow trains (at most 1024², widths at most 4096) needs more than the cap.
MAX_INFLATION, INFLATION_FLOOR, MAX_NETWORK_BYTES = 16, 64 << 20, 4 << 30
# Nesting of the pickle's objects (networks in networks, kwargs in kwargs): NVIDIA's are about 6 deep.
MAX_DEPTH = 64


def _inflate(raw: bytes, name: str) -> bytes:
    """gzip-decompress in blocks, stopping at min(MAX_NETWORK_BYTES, max(floor, MAX_INFLATION x the file))."""
    cap = min(MAX_NETWORK_BYTES, max(INFLATION_FLOOR, MAX_INFLATION * len(raw)))
    out, size = io.BytesIO(), 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            while block := f.read(1 << 20):
                size += len(block)
                if size > cap:
                    raise NetworkPickleError(f"{name}: inflates to more than {cap >> 20} MiB from {len(raw):,} bytes "
                                             "(a compression bomb, not a network pickle)")
                out.write(block)
    except (OSError, EOFError, zlib.error) as e:
        raise NetworkPickleError(f"{name}: a damaged gzip file ({_one_line(e)})") from None
    return out.getvalue()


def _check_depth(obj, name: str) -> None:
    """Refuse objects nested deeper than MAX_DEPTH, walked without recursion (what follows recurses)."""
    stack = [(obj, 0)]
    seen: set[int] = set()
    while stack:
        x, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise NetworkPickleError(f"{name}: objects nested more than {MAX_DEPTH} deep (NVIDIA's networks nest "
                                     "about 6): not a network pickle")
        if id(x) in seen:
            continue
        if isinstance(x, Persistent):
            seen.add(id(x))
            stack += [(v, depth + 1) for v in (x.init_args, x.init_kwargs, x.attrs, *x.modules.values())]
        elif isinstance(x, dict):
            seen.add(id(x))
            stack += [(v, depth + 1) for kv in x.items() for v in kv]
        elif isinstance(x, (list, tuple, set, frozenset)):
            seen.add(id(x))
            stack += [(v, depth + 1) for v in x]


def read_network_pickle(path: str | Path) -> tuple[dict, str]:
    """(the pickle's top-level dict with networks as Persistent records, sha256 of the file). A gzipped
    pickle is read too (inflated in blocks, with a cap). Anything else raises NetworkPickleError."""
    path = Path(path)
    if not path.is_file():
        raise NetworkPickleError(f"{path}: no such file")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if raw[:2] == b"\x1f\x8b":
        raw = _inflate(raw, path.name)
    if raw[:4] == b"PK\x03\x04":
        raise NetworkPickleError(f"{path.name}: a zip file (a torch.save checkpoint?), not a network pickle")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw)).load()
        del raw
        _check_depth(obj, path.name)
    except NetworkPickleError as e:
        raise NetworkPickleError(f"{path.name}: {e}".replace(f"{path.name}: {path.name}: ", f"{path.name}: ")) from None
    except (RecursionError, MemoryError) as e:
        raise NetworkPickleError(f"{path.name}: {'nested too deep' if isinstance(e, RecursionError) else 'asks for more memory than there is'} "
                                 "to be a network pickle") from None
    except Exception as e:  # any malformed stream: pickle, torch or numpy raise their own types
        if isinstance(e, EOFError) or "truncated" in str(e):
            raise NetworkPickleError(f"{path.name}: truncated (the pickle ends early)") from None
        raise NetworkPickleError(f"{path.name}: not a readable network pickle ({type(e).__name__}: "
                                 f"{_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise NetworkPickleError(f"{path.name}: holds a {type(obj).__name__}, not the dict of networks "
                                 "(G, D, G_ema) NVIDIA's training writes")
    missing = [k for k in ("G", "D", "G_ema") if not isinstance(obj.get(k), Persistent)]
    if missing:
        raise NetworkPickleError(f"{path.name}: no {', '.join(missing)} network in it (keys: "
                                 f"{', '.join(map(str, obj)) or 'none'})")
    return obj, digest


# --------------------------------------------------------------------------- ganflow networks from the records


def import_network_pickle(path: str | Path, allow_nonfinite: bool = False) -> dict:
    """A ganflow network file's content from an NVIDIA pickle: G, D, G_ema state dicts of ganflow's networks
    built from the recorded init kwargs, `arch`, `source` (file name, sha256, training_set_kwargs) and
    `format`. Loads with torch.load(weights_only=True) once saved (save_imported).

    Nothing is allocated on the file's word: the kwargs are checked (types, ranges, powers of two) and the networks
    built on the meta device and compared with the file's tensors first. Weights holding NaN or inf are refused
    unless allow_nonfinite (they generate black images and train on NaN)."""
    nets, digest = read_network_pickle(path)
    name = Path(path).name
    try:
        arch, build_g, build_d = nvidia_arch.architecture(nets["G_ema"], nets["D"])
        if nvidia_arch.architecture(nets["G"], nets["D"])[0] != arch:
            raise NetworkPickleError("G and G_ema were built with different kwargs")
        for who, build in (("G", build_g), ("D", build_d), ("G_ema", build_g)):
            nvidia_arch.check_sizes(build, nets[who], who)
        taps = {"G": arch["net"].get("resample_filter"), "D": arch.get("d_net", arch["net"])["resample_filter"]}
        out: dict[str, Any] = {"G": nvidia_arch.load_tensors(build_g(), nets["G"], "G", taps["G"]),
               "D": nvidia_arch.load_tensors(build_d(), nets["D"], "D", taps["D"]),
               "G_ema": nvidia_arch.load_tensors(build_g(), nets["G_ema"], "G_ema", taps["G"])}
    except (NetworkPickleError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as e:  # malformed
        raise NetworkPickleError(f"{name}: {_one_line(e)}") from None
    except (RecursionError, MemoryError, RuntimeError) as e:  # torch's allocator and shape errors included
        raise NetworkPickleError(f"{name}: its networks cannot be built ({type(e).__name__}: {_one_line(e)[:160]})") \
            from None
    if not allow_nonfinite:
        bad = next(filter(None, (nvidia_arch.nonfinite(out[k], k) for k in ("G", "D", "G_ema"))), None)
        if bad:
            raise NetworkPickleError(f"{name}: weights hold NaN or inf ({bad}): refused (`ganflow import "
                                     "--allow-nonfinite` takes them as they are)")
    tsk = nets.get("training_set_kwargs")
    out.update({
        "arch": arch,
        "source": {"file": name, "sha256": digest,
                   "training_set_kwargs": _json_like(_plain(tsk)) if isinstance(tsk, dict) else None,
                   "num_params": {k: nets[k].num_params() for k in ("G", "D")}},
        "format": FORMAT,
    })
    return out


def save_imported(state: dict, out: str | Path) -> Path:
    """Write an imported network file atomically (temp file, fsync, rename)."""
    from models.checkpoint import save_atomic

    return save_atomic(state, out)
