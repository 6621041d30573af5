"""`ganflow serve`'s API (FastAPI test client) on tiny trained runs: every endpoint, every kind of bad input
(422 with a message, never a 500, and no generation started), snapshot choice confined to the run folder,
weights_only loading, and the CLI's defaults."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import GifImagePlugin, Image

from models.checkpoint import list_checkpoints
from models.data import load_images
from models.generate import images_from_seeds, load_generator
from models.trainer import TrainConfig, Trainer
from tasks.evaluation.evaluate import export_best, write_fid_csv
from tasks.serving.generation import write_seed_images
from tasks.serving.app import Explorer, Limits, create_app, offered_resolutions
from tests.conftest import tiny_trained_run



def make_run(root: Path) -> Path:
    """A StyleGAN2 run as `ganflow train` + `ganflow evaluate` leave it: two checkpoints, best.pt exported from
    the first, fid.csv with a row per checkpoint and metrics.json naming the best and a diverged one."""
    _data, run, [(k0, _first), (k1, _second)] = tiny_trained_run(root)
    write_fid_csv(run, [{"kimg": k0, "fid": 12.5, "kid": 0.0125, "fd_dinov2": 310.0, "precision": 0.5, "recall": 0.25,
                         "memorized": 0.125},
                        {"kimg": k1, "fid": 30.0, "kid": None}])
    (run / "metrics.json").write_text(json.dumps({"best": {"kimg": k0, "fid": 12.5, "file": "best.pt"},
                                                  "flagged": {f"{k1:g}": "FID rose"}}))
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread) -> Path:
    return make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def pggan_ckpt(tmp_path_factory, one_torch_thread) -> Path:
    """A PGGAN of 32² that has grown to stage 2 (16²) only."""
    from tests.conftest import write_curated

    root = tmp_path_factory.mktemp("serve-pg")
    cfg = TrainConfig(arch="pggan", resolution=32, batch=4, snapshot_kimg=0.008, fade_kimg=0.004,
                      stabilize_kimg=0.004, net=dict(channel_base=256, channel_max=64, z_dim=32))
    Trainer(cfg, load_images(write_curated(root / "data"), 32), root / "pg").train(0.016)
    return list_checkpoints(root / "pg")[-1][1]


def training_neighbours(run: Path, cache: Path):
    """The nearest-training-image finder over the run's dataset, in a random-initialized DINOv2 ViT-S/14's features
    (as `ganflow serve --data` with evaluate.metrics [fd_dinov2] and dinov2_weights: random)."""
    from tasks.evaluation.dinov2 import write_random_weights
    from tasks.evaluation.nearest import NeighbourSettings, TrainingNeighbours

    weights = write_random_weights(cache / "dinov2-random.pt")
    return TrainingNeighbours(NeighbourSettings(run.parent / "data", "fd_dinov2", weights, cache_dir=str(cache)))


@pytest.fixture(scope="module")
def neighbours(run, tmp_path_factory):
    return training_neighbours(run, tmp_path_factory.mktemp("nearest"))


@pytest.fixture(scope="module")
def client(run, neighbours) -> TestClient:
    # raise_server_exceptions=False: a bug answers 500 here as in production, and the 422 tests would see it
    return TestClient(create_app(Explorer(run_dir=run, training=neighbours)), raise_server_exceptions=False)


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


# ------------------------------------------------------------------ each endpoint
def test_page_is_served_with_every_control(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for control in ('id="seed"', 'id="random"', 'id="truncation"', 'id="resolution"', 'id="neighbours"',
                    'id="morph"', 'id="play"', 'id="download"', 'id="fid"', 'id="snapshot"'):
        assert control in r.text, control


def test_snapshots_lists_the_run_best_first(client, run):
    body = client.get("/api/snapshots").json()
    names = [s["name"] for s in body["snapshots"]]
    assert names == ["best.pt"] + [f"checkpoints/{p.name}" for _k, p in list_checkpoints(run)]
    assert body["default"] == "best.pt"
    assert body["snapshots"][0]["kimg"] == list_checkpoints(run)[0][0]  # from metrics.json


def test_info_offers_resampled_sizes_for_stylegan2(client):
    info = client.get("/api/info").json()
    assert info["arch"] == "stylegan2" and info["snapshot"] == "best.pt"
    assert info["native_resolution"] == 32 and info["default_resolution"] == 32
    assert info["resolutions"] == [16, 32, 64, 128, 256, 512, 1024]
    assert all(type(r) is int for r in info["resolutions"])  # JSON 16.0 would not match the page's <option>s
    assert info["truncation"] is True and info["limits"]["max_frames"] == Limits().max_frames


def test_image_is_the_same_file_as_ganflow_generate(client, run, tmp_path):
    r = client.get("/api/image.png", params={"seed": 42, "truncation": 0.7, "resolution": 64})
    assert png(r).shape == (64, 64, 3)
    assert 'filename="seed0042-64px.png"' in r.headers["content-disposition"]
    out = write_seed_images(run / "best.pt", [42], tmp_path, truncation_psi=0.7, resolution=64)
    assert Path(out["images"][0]).read_bytes() == r.content
    # another seed is another image; truncation 0 draws every seed as the average image
    assert not np.array_equal(png(client.get("/api/image.png", params={"seed": 43})),
                              png(client.get("/api/image.png", params={"seed": 42})))
    assert np.array_equal(png(client.get("/api/image.png", params={"seed": 1, "truncation": 0})),
                          png(client.get("/api/image.png", params={"seed": 2, "truncation": 0})))


def test_snapshot_choice_draws_with_that_snapshot(client, run):
    (_k0, first), (_k1, second) = list_checkpoints(run)
    at = lambda name: png(client.get("/api/image.png", params={"seed": 5, "snapshot": name}))  # noqa: E731
    # best.pt was exported from the first checkpoint: same network, same image; the second trained further
    assert np.array_equal(at("best.pt"), at(f"checkpoints/{first.name}"))
    assert not np.array_equal(at("best.pt"), at(f"checkpoints/{second.name}"))
    assert client.get("/api/info", params={"snapshot": f"checkpoints/{second.name}"}).json()["kimg"] == _k1


def test_neighbours_grid_starts_with_the_seed_and_spread_moves_away(client):
    grid = png(client.get("/api/neighbours.png", params={"seed": 7, "count": 9, "spread": 0.5}))
    assert grid.shape == (3 * 32, 3 * 32, 3)
    own = png(client.get("/api/image.png", params={"seed": 7})).astype(int)
    tiles = [grid[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32].astype(int) for r in range(3) for c in range(3)]
    assert np.abs(tiles[0] - own).max() <= 1  # batch 9 against batch 1: CPU kernels may round ±1
    assert all(np.abs(t - own).mean() > 1 for t in tiles[1:])
    # spread 0: every tile is the seed's image; 4 tiles at 16² make a 2×2 grid of 16² tiles
    flat = png(client.get("/api/neighbours.png", params={"seed": 7, "count": 4, "spread": 0, "resolution": 16}))
    assert flat.shape == (32, 32, 3)
    assert np.array_equal(flat[:16, :16], flat[16:, 16:]) and np.array_equal(flat[:16, :16], flat[:16, 16:])


def test_morph_is_a_looping_gif_starting_at_seed_a(client):
    r = client.get("/api/morph.gif", params={"seed_a": 3, "seed_b": 9, "frames": 8, "fps": 10, "resolution": 16})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(r.content))
    assert isinstance(gif, GifImagePlugin.GifImageFile) and gif.n_frames == 8 and gif.size == (16, 16) and gif.info["loop"] == 0 and gif.info["duration"] == 100
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB"), dtype=int))
    a = png(client.get("/api/image.png", params={"seed": 3, "resolution": 16})).astype(int)
    b = png(client.get("/api/image.png", params={"seed": 9, "resolution": 16})).astype(int)
    d = lambda x, y: np.abs(x - y).mean()  # noqa: E731
    assert d(frames[0], a) < d(frames[0], b) and d(frames[4], b) < d(frames[4], a)  # A at 0, B half way


def test_fid_table_from_fid_csv_with_best_and_diverged(client, run):
    (k0, first), (k1, second) = list_checkpoints(run)
    body = client.get("/api/fid").json()
    assert body["best_kimg"] == k0
    # the keys, in order, that scripts and the page read (the registry's labelled columns, for the built-in metrics)
    assert list(body) == ["rows", "best_kimg", "note"]
    assert [list(r) for r in body["rows"]] == [["kimg", "fid", "kid", "fd_dinov2", "precision", "recall", "memorized",
                                               "snapshot", "note"]] * 2
    assert body["rows"] == [
        {"kimg": k0, "fid": 12.5, "kid": 0.0125, "fd_dinov2": 310.0, "precision": 0.5, "recall": 0.25,
         "memorized": 0.125, "snapshot": f"checkpoints/{first.name}", "note": "best"},
        {"kimg": k1, "fid": 30.0, "kid": None, "fd_dinov2": None, "precision": None, "recall": None,
         "memorized": None, "snapshot": f"checkpoints/{second.name}", "note": "diverged"}]


def test_fid_columns_are_the_registered_metrics_labelled_ones(client):
    assert client.get("/api/fid/columns").json() == {"columns": [
        {"name": "fid", "label": "FID", "fmt": "{:.4f}", "always": True},
        {"name": "kid", "label": "KID", "fmt": "{:.5f}", "always": True},
        {"name": "fd_dinov2", "label": "FD-DINOv2", "fmt": "{:.3f}", "always": False},
        {"name": "precision", "label": "precision", "fmt": "{:.3f}", "always": False},
        {"name": "recall", "label": "recall", "fmt": "{:.3f}", "always": False},
        {"name": "memorized", "label": "memorized", "fmt": "{:.1%}", "always": False}]}
    schema = client.get("/openapi.json").json()["components"]["schemas"]["FidRow"]
    assert list(schema["properties"]) == ["kimg", "fid", "kid", "fd_dinov2", "precision", "recall", "memorized",
                                          "snapshot", "note"]


@pytest.fixture()
def sharpness():
    """A metric registered for one test (with a column no FID table row has by default)."""
    from tasks.evaluation import registry

    @registry.register("sharpness", "first", (registry.Column("sharpness", label="sharpness", fmt="{:.2f}"),),
                       order=70)
    def sharpness(s, space) -> dict:
        return {"sharpness": 1.0}

    yield sharpness
    registry.unregister("sharpness")


def test_a_registered_metric_is_in_the_fid_api_and_its_schema(client, run, sharpness, tmp_path):
    """Registered before the app is created, a metric's column is served (from fid.csv), documented and listed for
    the page, after the built-in ones; an app created before it keeps its own schema and still answers."""
    import shutil

    from tasks.evaluation.fid_table import read_fid_csv

    shutil.copytree(run, tmp_path / "run")
    rows = read_fid_csv(tmp_path / "run")
    rows[0]["sharpness"] = 3.25
    write_fid_csv(tmp_path / "run", rows)
    app = TestClient(create_app(Explorer(run_dir=tmp_path / "run")))
    body = app.get("/api/fid").json()
    assert list(body["rows"][0]) == ["kimg", "fid", "kid", "fd_dinov2", "precision", "recall", "memorized",
                                     "sharpness", "snapshot", "note"]
    assert [r["sharpness"] for r in body["rows"]] == [3.25, None]
    schema = app.get("/openapi.json").json()["components"]["schemas"]["FidRow"]
    assert list(schema["properties"])[-3:] == ["sharpness", "snapshot", "note"]
    assert "sharpness" in schema["required"]
    assert app.get("/api/fid/columns").json()["columns"][-1] == {"name": "sharpness", "label": "sharpness",
                                                                "fmt": "{:.2f}", "always": False}
    # the module's app was created before: its rows and schema are the built-in ones
    assert "sharpness" not in client.get("/api/fid").json()["rows"][0]
    from tasks.evaluation import registry

    registry.unregister("sharpness")  # created while it was registered, the app still answers with its own schema
    assert app.get("/api/fid").json()["rows"][0]["sharpness"] is None  # fid.csv's column no longer reads


def test_a_metric_column_named_like_a_row_field_is_refused(run):
    from tasks.evaluation import registry

    registry.register("notes", "checkpoint", (registry.Column("note", label="note"),), order=80)(lambda s, sp: {})
    try:
        with pytest.raises(ValueError, match="cannot be named 'note'"):
            create_app(Explorer(run_dir=run))
    finally:
        registry.unregister("notes")


def test_nearest_training_images_with_their_distances(client, run, neighbours):
    """The 3 nearest training images of a seed's image, nearest first; each distance is the distance between the
    features of the served PNGs themselves (the generated one and the training ones)."""
    from tasks.evaluation.metrics import source_batches, source_ids

    body = client.get("/api/nearest", params={"seed": 3}).json()
    assert body["snapshot"] == "best.pt" and body["features"] == "dinov2-vits14" and body["threshold"] > 0
    ranks = body["neighbours"]
    assert [n["rank"] for n in ranks] == [1, 2, 3]
    distances = [n["distance"] for n in ranks]
    assert distances == sorted(distances) and len({n["id"] for n in ranks}) == 3
    ids = source_ids(run.parent / "data")
    assert all(n["id"] in ids for n in ranks)

    generated = png(client.get("/api/image.png", params={"seed": 3}))
    train = [png(client.get("/api/training-image.png", params={"id": n["id"]})) for n in ranks]
    dataset = next(iter(source_batches(run.parent / "data", batch=100))).permute(0, 2, 3, 1).numpy()
    assert all(np.array_equal(t, dataset[ids.index(n["id"])]) for t, n in zip(train, ranks))  # the stored pixels
    from tasks.evaluation.dinov2 import load_extractor

    extractor = load_extractor(neighbours.settings.weights)[0]
    feats = extractor(torch.from_numpy(np.stack([generated, *train])).permute(0, 3, 1, 2))[0].numpy()
    assert np.linalg.norm(feats[1:] - feats[0], axis=1) == pytest.approx(distances, rel=1e-4)
    # the training set's own images are their own nearest neighbours, at distance ~0
    nearest_own = neighbours.nearest(dataset[5], 1)["neighbours"][0]
    assert nearest_own["id"] == ids[5] and nearest_own["distance"] < 1e-2


def test_nearest_without_a_dataset_says_to_pass_data(run):
    lone = TestClient(create_app(Explorer(run_dir=run)), raise_server_exceptions=False)
    r = lone.get("/api/nearest", params={"seed": 1})
    assert r.status_code == 422 and "--data" in r.json()["detail"]
    assert lone.get("/api/training-image.png", params={"id": "x.png"}).status_code == 422


def test_fid_table_without_fid_csv_says_how_to_get_one(run):
    app = create_app(Explorer(snapshot=list_checkpoints(run)[0][1].parent.parent / "best.pt"))
    assert TestClient(app).get("/api/fid").json()["rows"]  # best.pt's run folder has fid.csv
    lone = run.parent / "lone"
    lone.mkdir()
    (lone / "best.pt").write_bytes((run / "best.pt").read_bytes())
    lone_client = TestClient(create_app(Explorer(snapshot=lone / "best.pt")), raise_server_exceptions=False)
    body = lone_client.get("/api/fid").json()
    assert body["rows"] == [] and "ganflow evaluate" in body["note"]
    (lone / "fid.csv").write_text("kimg,fid\n1.0,not-a-number\n")
    body = lone_client.get("/api/fid").json()
    assert body["rows"] == [] and "does not read" in body["note"]


def test_openapi_documents_every_endpoint_with_its_media_type_and_422(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert set(paths) == {"/api/snapshots", "/api/info", "/api/image.png", "/api/neighbours.png", "/api/morph.gif",
                          "/api/fid", "/api/fid/columns", "/api/nearest", "/api/training-image.png"}
    assert "image/png" in paths["/api/image.png"]["get"]["responses"]["200"]["content"]
    assert "image/gif" in paths["/api/morph.gif"]["get"]["responses"]["200"]["content"]
    seed = next(p for p in paths["/api/image.png"]["get"]["parameters"] if p["name"] == "seed")
    assert seed["schema"]["maximum"] == 2 ** 32 - 1 and seed["required"]
    for path in ("/api/image.png", "/api/neighbours.png", "/api/morph.gif", "/api/info", "/api/nearest",
                 "/api/training-image.png"):
        assert set(paths[path]["get"]["responses"]["422"]["content"]) == {"application/json"}, path


# ------------------------------------------------------------------ bad input: 422, a message, no generation
BAD = [
    ("/api/image.png", {"seed": -1}, "seed"),
    ("/api/image.png", {"seed": 2 ** 32}, "seed"),
    ("/api/image.png", {"seed": "ten"}, "seed"),
    ("/api/image.png", {}, "seed"),
    ("/api/image.png", {"seed": 1, "truncation": 2.5}, "truncation"),
    ("/api/image.png", {"seed": 1, "truncation": -0.1}, "truncation"),
    ("/api/image.png", {"seed": 1, "truncation": "nan"}, "truncation"),
    ("/api/image.png", {"seed": 1, "truncation": "inf"}, "truncation"),
    ("/api/image.png", {"seed": 1, "resolution": 48}, "resolution 48 is not offered"),
    ("/api/image.png", {"seed": 1, "resolution": 8}, "resolution 8 is not offered"),
    ("/api/image.png", {"seed": 1, "resolution": 2048}, "resolution 2048 is not offered"),
    ("/api/image.png", {"seed": 1, "resolution": 0}, "resolution"),
    ("/api/image.png", {"seed": 1, "resolution": 10 ** 9}, "resolution"),
    ("/api/neighbours.png", {"seed": 1, "count": 0}, "count"),
    ("/api/neighbours.png", {"seed": 1, "count": 26}, "count"),
    ("/api/neighbours.png", {"seed": 1, "spread": -0.5}, "spread"),
    ("/api/neighbours.png", {"seed": 1, "spread": 3}, "spread"),
    ("/api/neighbours.png", {"seed": 1, "count": 25, "resolution": 1024}, "over the cap"),
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "frames": 1}, "frames"),
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "frames": 121}, "frames"),
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "frames": 10 ** 9}, "frames"),
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "frames": 120, "resolution": 1024}, "over the cap"),
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "fps": 0}, "fps"),
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "fps": 5e-324}, "fps"),  # found by schemathesis: was a 500
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2, "fps": 1000}, "fps"),
    ("/api/morph.gif", {"seed_a": 1}, "seed_b"),
    ("/api/morph.gif", {"seed_a": 1, "seed_b": 2 ** 40}, "seed_b"),
    ("/api/image.png", {"seed": 1, "snapshot": "../run/best.pt"}, "unknown snapshot"),
    ("/api/image.png", {"seed": 1, "snapshot": "../../../../etc/passwd"}, "unknown snapshot"),
    ("/api/image.png", {"seed": 1, "snapshot": "checkpoints/../best.pt"}, "unknown snapshot"),
    ("/api/image.png", {"seed": 1, "snapshot": "/etc/passwd"}, "unknown snapshot"),
    ("/api/image.png", {"seed": 1, "snapshot": "data/dataset.json"}, "unknown snapshot"),
    ("/api/info", {"snapshot": "x" * 201}, "snapshot"),
    ("/api/info", {"snapshot": "nope.pt"}, "unknown snapshot"),
    ("/api/nearest", {"seed": -1}, "seed"),
    ("/api/nearest", {"seed": 1, "count": 0}, "count"),
    ("/api/nearest", {"seed": 1, "count": 9}, "count"),
    ("/api/nearest", {"seed": 1, "snapshot": "nope.pt"}, "unknown snapshot"),
    ("/api/training-image.png", {}, "id"),
    ("/api/training-image.png", {"id": "../../../etc/passwd"}, "not an image of the served dataset"),
    ("/api/training-image.png", {"id": "shards/shard-000000.tar/../../dataset.json"}, "not an image of the served"),
]


@pytest.mark.parametrize("path,params,says", BAD, ids=[f"{p}-{'-'.join(map(str, q))}" for p, q, _ in BAD])
def test_bad_input_is_422_with_a_message_and_generates_nothing(client, monkeypatch, path, params, says):
    from tasks.serving import app as serve

    calls = []
    for fn in ("images_from_seeds", "images_from_z", "interpolation_frames"):
        monkeypatch.setattr(serve, fn, lambda *a, _fn=fn, **k: calls.append(_fn))
    r = client.get(path, params=params)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and says in detail, detail
    assert calls == []  # refused before any generator call: a huge request costs nothing


def test_limits_are_settings(run):
    small = TestClient(create_app(Explorer(run_dir=run, limits=Limits(max_frames=4, max_pixels=3 * 16 * 16))))
    r = small.get("/api/morph.gif", params={"seed_a": 1, "seed_b": 2, "frames": 5})
    assert r.status_code == 422 and "frames" in r.json()["detail"]
    r = small.get("/api/morph.gif", params={"seed_a": 1, "seed_b": 2, "frames": 4, "resolution": 16})
    assert r.status_code == 422 and "cap" in r.json()["detail"]
    r = small.get("/api/morph.gif", params={"seed_a": 1, "seed_b": 2, "frames": 3, "resolution": 16})
    assert r.status_code == 200


# ------------------------------------------------------------------ PGGAN: its grown stages, no truncation
def test_pggan_offers_its_grown_stages_and_refuses_truncation(pggan_ckpt):
    G, arch = load_generator(pggan_ckpt)
    assert offered_resolutions(arch) == [4, 8, 16]  # a 32² network that has grown to 16² so far
    c = TestClient(create_app(Explorer(snapshot=pggan_ckpt)), raise_server_exceptions=False)
    info = c.get("/api/info").json()
    assert (info["arch"], info["default_resolution"], info["truncation"]) == ("pggan", 16, False)
    img = png(c.get("/api/image.png", params={"seed": 4, "resolution": 8}))
    assert np.array_equal(img, images_from_seeds(G, arch, [4], resolution=8, batch=1)[0])  # stage 1's own layers
    assert png(c.get("/api/image.png", params={"seed": 4})).shape == (16, 16, 3)
    for params, says in (({"resolution": 32}, "not offered"), ({"resolution": 64}, "not offered"),
                         ({"truncation": 0.5}, "no truncation")):
        r = c.get("/api/image.png", params={"seed": 4, **params})
        assert r.status_code == 422 and says in r.json()["detail"], r.text
    assert c.get("/api/morph.gif", params={"seed_a": 1, "seed_b": 2, "frames": 4, "resolution": 8}).status_code == 200


# ------------------------------------------------------------------ confinement and safe loading
def test_only_snapshots_inside_the_run_folder_can_be_chosen(run, tmp_path):
    outside = tmp_path / "outside.pt"
    outside.write_bytes((run / "best.pt").read_bytes())
    link = run / "checkpoints" / "ckpt-0000099.000.pt"  # a checkpoint name, but a symlink out of the run
    link.symlink_to(outside)
    try:
        c = TestClient(create_app(Explorer(run_dir=run)))
        names = [s["name"] for s in c.get("/api/snapshots").json()["snapshots"]]
        assert "checkpoints/ckpt-0000099.000.pt" not in names and len(names) == 3
        r = c.get("/api/image.png", params={"seed": 1, "snapshot": "checkpoints/ckpt-0000099.000.pt"})
        assert r.status_code == 422 and "unknown snapshot" in r.json()["detail"]
        r = c.get("/api/image.png", params={"seed": 1, "snapshot": str(outside)})
        assert r.status_code == 422
    finally:
        link.unlink()


class _Payload:
    """What a malicious checkpoint could carry: unpickling it would write a file."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_snapshots_load_with_weights_only(run, tmp_path):
    evil_run = tmp_path / "evil"
    evil_run.mkdir()
    state = torch.load(run / "best.pt", weights_only=True)
    payload = _Payload()
    payload.marker = tmp_path / "pwned.txt"
    torch.save({**state, "extra": payload}, evil_run / "best.pt")
    c = TestClient(create_app(Explorer(run_dir=evil_run)), raise_server_exceptions=False)
    r = c.get("/api/image.png", params={"seed": 1})
    assert r.status_code == 422 and "does not load" in r.json()["detail"], r.text
    assert not payload.marker.exists()  # weights_only refused the pickled call instead of running it


def test_explorer_needs_exactly_one_source(run, tmp_path):
    with pytest.raises(ValueError, match="either"):
        Explorer(snapshot=run / "best.pt", run_dir=run)
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        Explorer(run_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Explorer(snapshot=tmp_path / "missing.pt")


def test_a_rewritten_best_pt_is_reloaded(run, tmp_path):
    """`ganflow evaluate` re-exports best.pt while the page is open: the next request draws with the new one."""
    r2 = tmp_path / "r2"
    (r2 / "checkpoints").mkdir(parents=True)
    (_k0, first), (_k1, second) = list_checkpoints(run)
    export_best(first, r2 / "best.pt")
    ex = Explorer(run_dir=r2)
    before = ex.image(None, 11)
    export_best(second, r2 / "best.pt")
    st = (r2 / "best.pt").stat()
    os.utime(r2 / "best.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # coarse clocks: a distinct mtime
    assert not np.array_equal(before, ex.image(None, 11))


# ------------------------------------------------------------------ the CLI
def test_cli_serves_on_loopback_by_default(run, monkeypatch, capsys):
    import uvicorn

    from flows.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    assert main(["serve", "--run-dir", str(run)]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8000)
    # The CLI's app answers only to the address it is bound to (a DNS-rebinding page's Host is refused)
    assert TestClient(seen["app"], base_url="http://127.0.0.1:8000").get("/api/info").json()["snapshot"] == "best.pt"
    assert TestClient(seen["app"]).get("/api/info").status_code == 400  # Host: testserver
    assert "http://127.0.0.1:8000/" in capsys.readouterr().err
    assert main(["serve", "--snapshot", str(run / "best.pt"), "--host", "0.0.0.0", "--port", "9001"]) == 0
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 9001)
    assert "anyone who can reach this machine" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path, capsys):
    from flows.cli import main

    assert main(["serve", "--run-dir", str(tmp_path)]) == 2
    assert "no best.pt" in capsys.readouterr().err
    broken = tmp_path / "best.pt"
    broken.write_bytes(b"not a checkpoint")
    assert main(["serve", "--snapshot", str(broken)]) == 2
    assert "does not load" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve"])  # --snapshot or --run-dir is required


def test_cli_data_serves_nearest_training_images_with_the_evaluate_settings(run, neighbours, tmp_path, monkeypatch,
                                                                             capsys):
    import uvicorn
    import yaml

    from flows.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.delenv("GANFLOW_DINOV2_WEIGHTS", raising=False)
    params = tmp_path / "params.yaml"
    cache = neighbours.settings.cache_dir  # the features the module's `neighbours` cached: nothing re-extracted
    params.write_text(yaml.safe_dump({"evaluate": {"metrics": ["fd_dinov2"], "cache_dir": cache,
                                                   "dinov2_weights": str(neighbours.settings.weights)}}))
    data = str(run.parent / "data")
    assert main(["serve", "--run-dir", str(run), "--data", data, "--params", str(params)]) == 0
    body = TestClient(seen["app"], base_url="http://127.0.0.1:8000").get("/api/nearest", params={"seed": 2}).json()
    assert body["features"] == "dinov2-vits14" and len(body["neighbours"]) == 3
    assert body == neighbours_json(TestClient(create_app(Explorer(run_dir=run, training=neighbours))), 2)

    params.write_text(yaml.safe_dump({"evaluate": {"metrics": ["fd_dinov2"]}}))  # no DINOv2 weights anywhere
    assert main(["serve", "--run-dir", str(run), "--data", data, "--params", str(params)]) == 2
    assert "dinov2_vitl14_pretrain.pth" in capsys.readouterr().err


def neighbours_json(client: TestClient, seed: int) -> dict:
    return client.get("/api/nearest", params={"seed": seed}).json()
