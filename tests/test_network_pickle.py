"""`ganflow import`: NVIDIA network pickles read without running anything from them.

The recorded pickles (tests/data/nvidia_pickles, made by its record.py with NVIDIA's own code) are tiny
networks with non-default kwargs; the expected images are what the reference's generate.py/gen_images.py
wrote from them. Hostile pickles are built here, at test time.
"""
from __future__ import annotations

import collections
import contextlib
import gzip
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import GifImagePlugin, Image

from flows.cli import main
from models.network_pickle import NetworkPickleError, import_network_pickle, read_network_pickle, save_imported

DATA = Path(__file__).parent / "data" / "nvidia_pickles"
RECORDED = ["stylegan2", "stylegan2-sg3", "stylegan3-t", "stylegan3-r"]
SEEDS = [0, 1, 2, 3]


def _read(name: str) -> bytes:
    return gzip.decompress((DATA / f"{name}.pkl.gz").read_bytes())


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """`ganflow import` of each recorded pickle: {name: path of the .pt}."""
    root = tmp_path_factory.mktemp("imported")
    out = {}
    for name in RECORDED:
        path = root / f"{name}.pt"
        assert main(["import", str(DATA / f"{name}.pkl.gz"), "--out", str(path)]) == 0
        out[name] = path
    return out


# --------------------------------------------------------------------------- parity with the reference


@pytest.mark.parametrize("name", RECORDED)
@pytest.mark.parametrize("psi", [0.7, 1.0])
def test_generate_matches_reference_images(imported, name, psi, tmp_path):
    """`ganflow generate` from the imported file writes the reference's images (uint8, off by at most 1)."""
    assert main(["generate", "--snapshot", str(imported[name]), "--seeds", "0-3", "--trunc", str(psi),
                 "--out", str(tmp_path)]) == 0
    expected = np.load(DATA / f"{name}-expected.npz")[f"{name}_psi{psi}"]
    got = np.stack([np.asarray(Image.open(tmp_path / f"seed{s:04d}.png").convert("RGB")) for s in SEEDS])
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert expected.std() > 5  # the recorded images are not flat, so agreeing means something


def test_stylegan2_architecture_from_kwargs_not_defaults(imported):
    state = torch.load(imported["stylegan2"], weights_only=True)
    assert state["format"] == "ganflow-network-1"
    assert state["arch"]["name"] == "stylegan2"
    net = state["arch"]["net"]
    # record.py's kwargs: none of these is a default of the reference or of ganflow.
    assert (net["z_dim"], net["w_dim"], net["resolution"], net["mapping_layers"]) == (64, 16, 16, 2)
    assert (net["channel_base"], net["channel_max"], net["mbstd_group"], net["conv_clamp"]) == (128, 8, 2, 256.0)
    assert net["w_avg_beta"] == 0.995  # stylegan2-ada-pytorch's default (stylegan3's is 0.998)
    src = state["source"]
    import hashlib

    assert src["sha256"] == hashlib.sha256((DATA / "stylegan2.pkl.gz").read_bytes()).hexdigest()
    assert src["training_set_kwargs"]["class_name"] == "training.dataset.ImageFolderDataset"
    assert src["num_params"] == {"G": 5534, "D": 4193}  # what the reference counted (record.py printed them)


@pytest.mark.parametrize("name,kernel,radial,base,cmax,g_params", [
    ("stylegan3-t", 3, False, 256, 4, 4503), ("stylegan3-r", 1, True, 512, 8, 4519)])
def test_stylegan3_architecture_from_kwargs(imported, name, kernel, radial, base, cmax, g_params):
    """T or R from the kwargs (conv_kernel 1 + use_radial_filters = R); D's own config beside G's."""
    state = torch.load(imported[name], weights_only=True)
    assert state["arch"]["name"] == name
    net, d_net = state["arch"]["net"], state["arch"]["d_net"]
    assert (net["conv_kernel"], net["use_radial_filters"], net["channel_base"], net["channel_max"]) == (
        kernel, radial, base, cmax)
    assert (net["z_dim"], net["w_dim"], net["resolution"], net["mapping_layers"]) == (64, 16, 16, 2)
    assert net["magnitude_ema_beta"] == pytest.approx(0.5 ** (8 / 20000))  # train.py's for batch 8, not 0.999
    assert (d_net["channel_base"], d_net["channel_max"], d_net["mbstd_group"], d_net["resolution"]) == (128, 8, 4, 16)
    assert state["source"]["num_params"] == {"G": g_params, "D": 4193}
    nets, _ = read_network_pickle(DATA / f"{name}.pkl.gz")
    ref = nets["G_ema"].state_dict()
    assert set(state["G_ema"]) == set(ref)  # StyleGAN3 keeps every tensor under the reference's name
    assert all(torch.equal(v, ref[k]) for k, v in state["G_ema"].items())


def test_stylegan3_repos_stylegan2_takes_that_repos_defaults(imported):
    """stylegan3's networks_stylegan2 takes its synthesis kwargs flat and has other defaults than
    stylegan2-ada-pytorch's networks.py (record.py leaves conv_clamp, num_fp16_res and w_avg_beta unset)."""
    state = torch.load(imported["stylegan2-sg3"], weights_only=True)
    net = state["arch"]["net"]
    assert (net["mapping_layers"], net["channel_base"], net["channel_max"]) == (3, 128, 8)
    assert (net["conv_clamp"], net["num_fp16_res"], net["w_avg_beta"], net["fused_modconv"]) == (256.0, 4, 0.998, None)


def test_imported_tensors_are_the_pickles_own(imported):
    """G, D and G_ema each hold their own network's tensors (G_ema differs from G in the recording)."""
    nets, _ = read_network_pickle(DATA / "stylegan2.pkl.gz")
    state = torch.load(imported["stylegan2"], weights_only=True)
    for key in ("G", "D", "G_ema"):
        ref = nets[key].state_dict()
        for k, v in state[key].items():
            assert torch.equal(v, ref[k]), (key, k)
        dropped = set(ref) - set(state[key])
        assert dropped and all(k.endswith("resample_filter") for k in dropped)  # constants ganflow derives
    assert not torch.equal(state["G"]["mapping.fc0.weight"], state["G_ema"]["mapping.fc0.weight"])


def test_import_output_writes_atomically_and_loads_weights_only(tmp_path):
    state = import_network_pickle(DATA / "stylegan2.pkl.gz")
    out = save_imported(state, tmp_path / "sub" / "net.pt")
    assert sorted(os.listdir(out.parent)) == ["net.pt"]  # no temp file left behind
    loaded = torch.load(out, weights_only=True)
    assert set(loaded) == {"G", "D", "G_ema", "arch", "source", "format"}


def test_cli_prints_what_it_imported(tmp_path, capsys):
    assert main(["import", str(DATA / "stylegan2.pkl.gz"), "--out", str(tmp_path / "n.pt")]) == 0
    out = capsys.readouterr().out
    assert "stylegan2 16x16" in out and "z_dim 64" in out and "G 5,534 parameters" in out and "D 4,193" in out


@pytest.mark.parametrize("name", ["stylegan2", "stylegan3-r"])
def test_morph_and_serve_take_an_imported_network(imported, tmp_path, name):
    """The other commands that read a network file accept an imported one as they accept best.pt."""
    from fastapi.testclient import TestClient

    from tasks.serving.app import Explorer, create_app

    path = str(imported[name])
    assert main(["morph", "--snapshot", path, "--seeds", "0,1", "--frames", "4", "--out", str(tmp_path / "m.gif")]) == 0
    gif = Image.open(tmp_path / "m.gif")
    assert isinstance(gif, GifImagePlugin.GifImageFile) and gif.n_frames == 4

    client = TestClient(create_app(Explorer(snapshot=path)))
    r = client.get("/api/image.png", params={"seed": 2, "truncation": 0.7})
    assert r.status_code == 200
    expected = np.load(DATA / f"{name}-expected.npz")[f"{name}_psi0.7"][2]
    got = np.asarray(Image.open(__import__("io").BytesIO(r.content)).convert("RGB"))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.filterwarnings("ignore:FID from 6 images")
def test_evaluate_snapshot_takes_an_imported_network(imported, tmp_path, capsys):
    """`ganflow evaluate --snapshot FILE`: FID of one network file (a pretrained one before fine-tuning)."""
    import json

    import yaml

    from tests.conftest import write_curated
    from tests.test_metrics import random_inception_weights

    path = str(imported["stylegan2"])
    data = write_curated(tmp_path / "data", n=6, side=16)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"n_fake": 6, "batch": 6, "kid": False,
                                                   "cache_dir": str(tmp_path / "cache")}}))
    weights = random_inception_weights(tmp_path / "inception-random.pt")
    capsys.readouterr()
    assert main(["evaluate", "--snapshot", path, "--data", str(data), "--inception-weights", weights,
                 "--params", str(params)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["arch"] == "stylegan2" and out["n_fake"] == 6 and np.isfinite(out["fid"]) and out["fid"] > 0


# --------------------------------------------------------------------------- writing pickles here


@contextlib.contextmanager
def _fake_modules(**modules: dict):
    """Modules under NVIDIA's names for the duration of a pickle.dumps (so globals are spelled as theirs)."""
    saved = {k: sys.modules.get(k) for k in modules}
    try:
        for name, attrs in modules.items():
            mod = types.ModuleType(name)
            for k, v in attrs.items():
                if isinstance(v, (types.FunctionType, type)):
                    v.__module__, v.__qualname__ = name, k
                setattr(mod, k, v)
            sys.modules[name] = mod
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _reconstruct_persistent_obj(meta):  # the name NVIDIA's pickles call; never called here
    raise AssertionError("not to be called")


class _PersistentReduce:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return _reconstruct_persistent_obj, (self.meta,)


def _dicts(x):
    return {k: _dicts(v) for k, v in x.items()} if isinstance(x, dict) else x


def _as_persistent(rec, module_src: str, edit=None):
    """A Persistent record back in torch_utils.persistence's pickle form, with `module_src` as its source."""
    kwargs = _dicts(edit(rec) if edit else rec.init_kwargs)
    state = {"training": False, "_parameters": collections.OrderedDict(rec.parameters),
             "_buffers": collections.OrderedDict(rec.buffers), "_non_persistent_buffers_set": set(rec.non_persistent),
             "_modules": collections.OrderedDict((k, _as_persistent(m, module_src) if m else None)
                                                 for k, m in rec.modules.items()),
             "_init_args": rec.init_args, "_init_kwargs": kwargs, **rec.attrs}
    return _PersistentReduce(dict(type="class", version=6, module_src=module_src, class_name=rec.class_name,
                                  state=state))


def _repickle(path: Path, module_src: str, edit_g=None, edit_d=None) -> None:
    nets, _ = read_network_pickle(DATA / "stylegan2.pkl.gz")
    data = {k: _as_persistent(nets[k], module_src, edit_g if k.startswith("G") else edit_d) for k in ("G", "D", "G_ema")}
    data["training_set_kwargs"] = None
    with _fake_modules(**{"torch_utils": {}, "torch_utils.persistence": {
            "_reconstruct_persistent_obj": _reconstruct_persistent_obj}}):
        path.write_bytes(pickle.dumps(data))


class _Payload:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


# --------------------------------------------------------------------------- hostile and foreign pickles


def test_embedded_source_never_runs(tmp_path):
    """A valid network pickle whose embedded module source would write a file if exec'd imports fine, and
    the file is never written (NVIDIA's loader exec's that source; ganflow never does)."""
    marker = tmp_path / "ran.txt"
    src = f"open({str(marker)!r}, 'w').write('ran')\nclass Generator: pass\nclass Discriminator: pass\n"
    exec(compile(src, "<check>", "exec"), {})  # the payload does work when run...
    assert marker.exists()
    marker.unlink()
    hostile = tmp_path / "net.pkl"
    _repickle(hostile, src)
    state = import_network_pickle(hostile)  # ...and importing does not run it
    assert not marker.exists()
    ref_file = save_imported(import_network_pickle(DATA / "stylegan2.pkl.gz"), tmp_path / "ref.pt")
    ref = torch.load(ref_file, weights_only=True)
    assert all(torch.equal(v, ref["G_ema"][k]) for k, v in state["G_ema"].items())


@pytest.mark.parametrize("payload,global_name", [
    (lambda m: _Payload(os.system, (f"touch {m}",)), f"{os.system.__module__}.system"),
    (lambda m: _Payload(open, (str(m), "w")), f"{open.__module__}.open"),  # io.open
    (lambda m: {"G": _Payload(eval, (f"open({str(m)!r}, 'w')",))}, "builtins.eval"),
])
def test_reduce_payload_refused_naming_the_global(tmp_path, payload, global_name):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "evil.pkl"
    hostile.write_bytes(pickle.dumps(payload(marker)))
    with pytest.raises(NetworkPickleError, match=f"refusing to load {global_name}") as e:
        import_network_pickle(hostile)
    assert "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.filterwarnings("error")
def test_payload_inside_a_tensor_storage_refused(tmp_path):
    """A storage's bytes are themselves a (torch.save) pickle: they go through torch's weights_only unpickler."""
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Payload(os.system, (f"touch {marker}",)))
    hostile = tmp_path / "evil.pkl"
    hostile.write_bytes(pickle.dumps({"G": _Payload(torch.storage._load_from_bytes, (inner,))}))
    with pytest.raises(NetworkPickleError, match="a tensor storage that torch's weights_only loader refuses") as e:
        import_network_pickle(hostile)
    assert "\n" not in str(e.value) and "weights_only=False" not in str(e.value)
    assert not marker.exists()


def test_tensorflow_era_pickle_refused(tmp_path):
    class Network:  # what dnnlib.tflib.network.Network pickles look like: a class with state
        def __getstate__(self):
            return {"version": 4, "name": "G", "static_kwargs": {}, "variables": []}

    hostile = tmp_path / "karras2019stylegan-ffhq-1024x1024.pkl"
    with _fake_modules(**{"dnnlib": {}, "dnnlib.tflib": {}, "dnnlib.tflib.network": {"Network": Network}}):
        hostile.write_bytes(pickle.dumps((Network(), Network(), Network())))
    with pytest.raises(NetworkPickleError, match=r"TensorFlow-era pickle \(dnnlib\.tflib\.network\.Network\)"):
        import_network_pickle(hostile)


def test_truncated_and_foreign_files_refused(tmp_path):
    cut = tmp_path / "cut.pkl"
    raw = _read("stylegan2")
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NetworkPickleError, match="truncated"):
        import_network_pickle(cut)
    plain = tmp_path / "list.pkl"
    plain.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(NetworkPickleError, match="holds a list, not the dict of networks"):
        import_network_pickle(plain)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"G": {}}, ckpt)
    with pytest.raises(NetworkPickleError, match="zip file"):
        import_network_pickle(ckpt)
    nonets = tmp_path / "nonets.pkl"
    nonets.write_bytes(pickle.dumps({"G": 1, "D": torch.zeros(2)}))
    with pytest.raises(NetworkPickleError, match="no G, D, G_ema network"):
        import_network_pickle(nonets)


def test_unsupported_kwargs_refused_by_name(tmp_path):
    """A generator kwarg ganflow does not implement stops the import, naming it (never a silent default)."""
    def resnet_g(rec):
        kw = dict(rec.init_kwargs)
        kw["synthesis_kwargs"] = {**kw["synthesis_kwargs"], "architecture": "resnet"}
        return kw

    def extra_kwarg(rec):
        return {**rec.init_kwargs, "mapping_kwargs": {**rec.init_kwargs["mapping_kwargs"], "new_knob": 3}}

    def no_clamp(rec):  # kwargs that no longer say what the layers run with: the default (None) would differ
        return {**rec.init_kwargs, "synthesis_kwargs": {k: v for k, v in rec.init_kwargs["synthesis_kwargs"].items()
                                                        if k != "conv_clamp"}}

    for edit, message in ((resnet_g, "G.synthesis_kwargs.architecture='resnet' is not supported"),
                          (extra_kwarg, "unknown kwargs G.mapping_kwargs.new_knob"),
                          (no_clamp, "G's kwargs give conv_clamp None but G.synthesis.b4.conv1 records 256")):
        path = tmp_path / f"{edit.__name__}.pkl"
        _repickle(path, "# source", edit_g=edit)
        with pytest.raises(NetworkPickleError, match=message):
            import_network_pickle(path)


def test_kwargs_spelled_out_as_legacy_py_writes_them(tmp_path):
    """The published stylegan2-ada-pytorch files converted from TensorFlow by its legacy.py list every kwarg
    (None for w_avg_beta = not tracked, label-only ones, the D's label mapping): same network."""
    def g(rec):
        kw = rec.init_kwargs
        return {**kw, "mapping_kwargs": {**kw["mapping_kwargs"], "embed_features": None, "layer_features": None,
                                         "activation": "lrelu", "lr_multiplier": 0.01, "w_avg_beta": None},
                "synthesis_kwargs": {**kw["synthesis_kwargs"], "architecture": "skip", "resample_filter": [1, 3, 3, 1],
                                     "use_noise": True, "activation": "lrelu"}}

    def d(rec):
        kw = rec.init_kwargs
        return {**kw, "architecture": "resnet", "cmap_dim": None,
                "block_kwargs": {"activation": "lrelu", "resample_filter": [1, 3, 3, 1], "freeze_layers": 0},
                "mapping_kwargs": {"num_layers": 0, "embed_features": None, "layer_features": None,
                                   "activation": "lrelu", "lr_multiplier": 0.1},
                "epilogue_kwargs": {"mbstd_group_size": None, "mbstd_num_channels": 1, "activation": "lrelu"}}

    def recorded_beta_none(rec):  # what such a network's mapping records
        rec.modules["mapping"].attrs["w_avg_beta"] = None
        return g(rec)

    path = tmp_path / "legacy.pkl"
    _repickle(path, "# source", edit_g=recorded_beta_none, edit_d=d)
    net = import_network_pickle(path)["arch"]["net"]
    assert (net["w_avg_beta"], net["mbstd_group"], net["z_dim"], net["channel_base"]) == (1.0, 0, 64, 128)


def test_cli_refuses_hostile_pickle_in_one_line(tmp_path):
    """As a user runs it: non-zero exit, one line on stderr, no traceback, no output file, payload not run."""
    marker = tmp_path / "pwned"
    hostile = tmp_path / "evil.pkl"
    hostile.write_bytes(pickle.dumps(_Payload(os.system, (f"touch {marker}",))))
    out = tmp_path / "out.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "import", str(hostile), "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ganflow import: error:") and "system" in lines[0]
    assert not out.exists() and not marker.exists()
