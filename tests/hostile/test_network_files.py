"""Issue 28, point 3: memory follows a network file's size, not its claims. A gzipped pickle inflates in blocks up to
a cap; the recorded kwargs are checked (types, ranges, powers of two) and the networks built on the meta device and
compared with the file's own tensors before anything is allocated; NaN or inf weights are refused on import and on
--resume-from unless asked for; objects nested deeper than NVIDIA's ever are refused without a RecursionError. Every
refusal is one line naming the file. The pickles are the recorded tiny stylegan2 one, re-pickled with edits."""
from __future__ import annotations

import gzip
import math
import pickle
import tracemalloc
import zlib
from pathlib import Path

import pytest
import torch

from models.network_pickle import NetworkPickleError, import_network_pickle, read_network_pickle
from models.transfer import TransferError, load_networks
from tests.one_line import refused
from tests.test_network_pickle import (DATA, _as_persistent, _fake_modules, _reconstruct_persistent_obj)


def repickled(path: Path, edit_g=None, edit_d=None, tensors=None, extra: bytes = b"") -> Path:
    """The recorded stylegan2 pickle with G's/D's kwargs edited, a tensor edit (nets → None), and `extra` opcodes
    that push one more (key, value) into the top-level dict (after the last frame, which the unpickler allows)."""
    nets, _ = read_network_pickle(DATA / "stylegan2.pkl.gz")
    if tensors:
        tensors(nets)
    data = {k: _as_persistent(nets[k], "# source", edit_g if k.startswith("G") else edit_d) for k in ("G", "D", "G_ema")}
    data["training_set_kwargs"] = None
    with _fake_modules(**{"torch_utils": {}, "torch_utils.persistence": {
            "_reconstruct_persistent_obj": _reconstruct_persistent_obj}}):
        raw = pickle.dumps(data, protocol=4)
    if extra:
        raw = raw[:-1] + extra + b"s."  # before STOP: the key and value, then SETITEM
    path.write_bytes(raw)
    return path


def _synthesis(**changes):
    return lambda rec: {**rec.init_kwargs, "synthesis_kwargs": {**rec.init_kwargs["synthesis_kwargs"], **changes}}


def _top(**changes):
    return lambda rec: {**rec.init_kwargs, **changes}


def _mapping(**changes):
    return lambda rec: {**rec.init_kwargs, "mapping_kwargs": {**rec.init_kwargs["mapping_kwargs"], **changes}}


@pytest.mark.parametrize("edit_g, edit_d, says", [
    (_top(img_resolution=2 ** 20), _top(img_resolution=2 ** 20), "resolution 1048576: not a power of two from 4 to 1024"),
    (_top(img_resolution=48), _top(img_resolution=48), "resolution 48: not a power of two"),
    (_synthesis(channel_base=10 ** 9), _top(channel_base=10 ** 9), "channel_base 1000000000: not from 1 to 1048576"),
    (_synthesis(channel_max=20000), _top(channel_max=20000), "channel_max 20000: not from 1 to 4096"),
    (_top(z_dim=-1), None, "z_dim -1: not from 1 to 4096"),
    (_top(z_dim=0), None, "z_dim 0: not from 1 to 4096"),
    (_top(z_dim=float("inf")), None, "'inf' that is not an integer"),
    (_top(w_dim="16"), None, "'16' that is not an integer"),
    (_synthesis(resample_filter=[]), None, "a resample filter of 0 taps"),
    (_synthesis(num_fp16_res=10 ** 6), None, "num_fp16_res 1000000: not from 0 to 10"),
    (_mapping(lr_multiplier=float("inf")), None, "'inf' that is not a finite number"),
    (None, lambda rec: {**rec.init_kwargs, "epilogue_kwargs": {"mbstd_group_size": -4}}, "mbstd_group -4: not from 0"),
    # in range, and still not what the file holds: built on the meta device first, nothing allocated
    (_synthesis(channel_base=1 << 20, channel_max=4096), _top(channel_base=1 << 20, channel_max=4096),
     "kwargs describe tensors the file does not hold"),
])
def test_recorded_kwargs_are_checked_before_anything_is_allocated(tmp_path, capsys, edit_g, edit_d, says):
    path = repickled(tmp_path / "net.pkl", edit_g, edit_d)
    line = refused(["import", str(path), "--out", str(tmp_path / "out.pt")], capsys, "net.pkl", says)
    assert "Traceback" not in line and not (tmp_path / "out.pt").exists()


def test_a_gzip_bomb_is_stopped_as_it_inflates(tmp_path, capsys):
    """300 MB of zeros in 300 KB: refused after at most the cap (64 MiB) has come out, never inflated whole."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    block = bytes(1 << 20)
    with open(tmp_path / "bomb.pkl.gz", "wb") as f:
        for _ in range(300):
            f.write(z.compress(block))
        f.write(z.flush())
    assert (tmp_path / "bomb.pkl.gz").stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(NetworkPickleError, match="inflates to more than 64 MiB .* compression bomb"):
            read_network_pickle(tmp_path / "bomb.pkl.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150 << 20, peak  # whole, it took 300 MB (and 4.7 GB for the reported 2 MB file)
    refused(["import", str(tmp_path / "bomb.pkl.gz"), "--out", str(tmp_path / "o.pt")], capsys, "compression bomb")


def test_a_real_gzipped_network_still_imports():
    assert import_network_pickle(DATA / "stylegan2.pkl.gz")["format"] == "ganflow-network-1"


def _poison(nets):
    w = nets["G_ema"].modules["mapping"].modules["fc0"].parameters["weight"]
    nets["G_ema"].modules["mapping"].modules["fc0"].parameters["weight"] = w.clone().fill_(math.nan)


def test_nan_weights_are_refused_on_import_unless_asked_for(tmp_path, capsys):
    from flows.cli import main

    path = repickled(tmp_path / "nan.pkl", tensors=_poison)
    refused(["import", str(path), "--out", str(tmp_path / "nan.pt")], capsys, "nan.pkl: weights hold NaN or inf",
            "G_ema.mapping.fc0.weight", "--allow-nonfinite")
    assert not (tmp_path / "nan.pt").exists()
    assert main(["import", str(path), "--out", str(tmp_path / "nan.pt"), "--allow-nonfinite"]) == 0
    assert torch.isnan(torch.load(tmp_path / "nan.pt", weights_only=True)["G_ema"]["mapping.fc0.weight"]).all()


def test_resume_from_nan_weights_is_refused_unless_asked_for(tmp_path):
    state = import_network_pickle(DATA / "stylegan2.pkl.gz")
    state["G"]["mapping.fc0.bias"] = state["G"]["mapping.fc0.bias"].clone().fill_(math.inf)
    torch.save(state, tmp_path / "inf.pt")
    with pytest.raises(TransferError, match=r"inf.pt: weights hold NaN or inf \(G.mapping.fc0.bias\).*"
                                            "--allow-nonfinite, train.allow_nonfinite"):
        load_networks(tmp_path / "inf.pt")
    assert load_networks(tmp_path / "inf.pt", mmap=True).arch == state["arch"]  # the record alone: not checked
    assert torch.isinf(load_networks(tmp_path / "inf.pt", allow_nonfinite=True).G["mapping.fc0.bias"]).all()


def test_allow_nonfinite_is_one_option_spelled_the_same_for_import_and_train(tmp_path):
    """`ganflow import --allow-nonfinite` and `ganflow train --allow-nonfinite` (train.allow_nonfinite, also
    `train submit`'s and the flow's form): one name, one default, no environment variable."""
    from flows.cli import build_parser
    from flows.cli.options import given_settings
    from tasks.common.settings import TrainSettings, load
    from tests.conftest import PARAMS

    assert load(TrainSettings, PARAMS).allow_nonfinite is False  # params.yaml's train.allow_nonfinite
    assert build_parser("import").parse_args(["import", "n.pkl", "--out", "n.pt", "--allow-nonfinite"]).allow_nonfinite
    for command, verb in (("train", ["train"]), ("train-submit", ["train-submit", "--kimg", "1"])):
        args = build_parser(command).parse_args([*verb, "--data", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                                                 "--allow-nonfinite"])
        assert given_settings(args, TrainSettings)["allow_nonfinite"] is True, command


def _nested_list(depth: int) -> bytes:
    """Pickle opcodes for a list nested `depth` deep, without the recursion pickle.dumps would need."""
    return b"]" * depth + b"a" * (depth - 1)


@pytest.mark.parametrize("depth", [200, 1_000_000])
def test_objects_nested_deeper_than_a_network_are_one_line(tmp_path, capsys, depth):
    path = repickled(tmp_path / "deep.pkl", extra=b"X\x04\x00\x00\x00deep" + _nested_list(depth))
    refused(["import", str(path), "--out", str(tmp_path / "o.pt")], capsys, "deep.pkl: objects nested more than 64")


def test_gzip_of_a_nested_pickle_is_refused_the_same(tmp_path):
    raw = repickled(tmp_path / "deep.pkl", extra=b"X\x04\x00\x00\x00deep" + _nested_list(20_000)).read_bytes()
    (tmp_path / "deep.pkl.gz").write_bytes(gzip.compress(raw))
    with pytest.raises(NetworkPickleError, match="nested more than 64"):
        import_network_pickle(tmp_path / "deep.pkl.gz")
