"""`ganflow generate` and `ganflow morph` on a tiny trained snapshot: determinism, frame count, looping."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, ImageSequence

from flows.cli import main
from models.checkpoint import latest_checkpoint
from models.data import load_images
from models.trainer import TrainConfig, Trainer
from tasks.serving.generation import parse_seeds

SMALL_NET = dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32, mapping_layers=2)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory, one_torch_thread):
    from tests.conftest import write_curated

    root = tmp_path_factory.mktemp("gen")
    data = write_curated(root / "data")
    cfg = TrainConfig(arch="stylegan2", resolution=32, batch=4, snapshot_kimg=0.008, ada_target=0.0, net=SMALL_NET)
    Trainer(cfg, load_images(data, 32), root / "run").train(0.008)
    return str(latest_checkpoint(root / "run")[0])


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("7, 0-1") == [7, 0, 1]
    with pytest.raises(ValueError, match="0-63"):
        parse_seeds("3-1")
    with pytest.raises(ValueError, match="0-63"):
        parse_seeds("a")


def test_generate_same_seed_same_file_bytes(snapshot, tmp_path):
    assert main(["generate", "--snapshot", snapshot, "--seeds", "0-5", "--trunc", "0.7", "--out", str(tmp_path / "a")]) == 0
    assert main(["generate", "--snapshot", snapshot, "--seeds", "4,2", "--trunc", "0.7", "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["grid.png"] + [f"seed{i:04d}.png" for i in range(6)]
    for seed in (2, 4):
        name = f"seed{seed:04d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "seed0002.png").read_bytes() != (tmp_path / "a" / "seed0004.png").read_bytes()
    assert Image.open(tmp_path / "a" / "grid.png").size == (3 * 32, 2 * 32)
    # truncation changes the image; --resolution resizes it
    assert main(["generate", "--snapshot", snapshot, "--seeds", "2", "--resolution", "64", "--out", str(tmp_path / "c")]) == 0
    assert Image.open(tmp_path / "c" / "seed0002.png").size == (64, 64)


def _frames(path) -> list[np.ndarray]:
    return [np.asarray(f.convert("RGB"), dtype=np.int16) for f in ImageSequence.Iterator(Image.open(path))]


def test_morph_gif_frame_count_and_loop(snapshot, tmp_path):
    out = tmp_path / "morph.gif"
    assert main(["morph", "--snapshot", snapshot, "--seeds", "1,5,9", "--frames", "12", "--out", str(out)]) == 0
    gif = Image.open(out)
    assert isinstance(gif, GifImagePlugin.GifImageFile) and gif.n_frames == 12 and gif.info.get("loop") == 0  # loop=0: the GIF repeats forever
    frames = _frames(out)
    step = lambda a, b: np.abs(frames[a] - frames[b]).mean()  # noqa: E731
    # The path closes: the last frame is one step from the first (seed 1), unlike the far side of the loop.
    assert step(11, 0) < step(6, 0)
    # Frame 0 is seed 1's image (up to GIF palette quantization).
    assert main(["generate", "--snapshot", snapshot, "--seeds", "1", "--out", str(tmp_path / "g")]) == 0
    still = np.asarray(Image.open(tmp_path / "g" / "seed0001.png").convert("RGB"), dtype=np.int16)
    assert np.abs(frames[0] - still).mean() < np.abs(frames[4] - still).mean()


def test_morph_rejects_other_formats_and_one_seed(snapshot, tmp_path, capsys):
    assert main(["morph", "--snapshot", snapshot, "--seeds", "1,5", "--frames", "4", "--out", str(tmp_path / "m.avi")]) == 2
    assert ".gif or .mp4" in capsys.readouterr().err
    assert main(["morph", "--snapshot", snapshot, "--seeds", "1", "--frames", "4", "--out", str(tmp_path / "m.gif")]) == 2
    assert "at least 2 seeds" in capsys.readouterr().err


def test_morph_mp4_when_opencv_can_encode(snapshot, tmp_path):
    cv2 = pytest.importorskip("cv2")
    out = tmp_path / "m.mp4"
    assert main(["morph", "--snapshot", snapshot, "--seeds", "1,5", "--frames", "6", "--out", str(out)]) == 0
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6


def test_morph_replaces_its_own_gif_but_never_another_file(snapshot, tmp_path, capsys):
    out = tmp_path / "morph.gif"
    args = ["morph", "--snapshot", snapshot, "--seeds", "1,5", "--frames", "4", "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 0  # a rerun (make demo) replaces the GIF it wrote
    capsys.readouterr()
    for name, data in (("notes.gif", b"my own notes"), ("photo.gif", _gif_bytes()), ("clip.mp4", b"\x00" * 64)):
        theirs = tmp_path / name
        theirs.write_bytes(data)
        assert main(args[:-1] + [str(theirs)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "exists and is not a morph ganflow wrote" in err[0], err
        assert theirs.read_bytes() == data  # untouched


def _gif_bytes() -> bytes:
    """A GIF somebody else made (no ganflow comment)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, "GIF")
    return buf.getvalue()
