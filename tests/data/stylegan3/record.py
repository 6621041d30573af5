"""Record what tests/test_stylegan3.py checks models/stylegan3.py against: NVlabs/stylegan3's generator.

Not run by the tests. To regenerate, from a scratch checkout of the reference (never a dependency of
ganflow, never copied into it):

    git clone https://github.com/NVlabs/stylegan3 /tmp/stylegan3      # or `git archive` from a mirror
    PYTHONPATH=$PWD .venv/bin/python tests/data/stylegan3/record.py /tmp/stylegan3

For each small config (T and R at 16x16, T at 32x32; few channels, so the files stay small) it seeds torch,
builds the reference's Generator on CPU (so its ops take their non-CUDA reference paths) and writes
`<name>.pt.gz`: the config, a sha256 of every state-dict tensor (names, shapes, bytes) plus per-tensor sums,
latents z, the images of G(z) in eval mode, then the buffers and images after one G(z, update_emas=True)
(w_avg, magnitude EMAs) and the truncated images (psi 0.5) that use the moved w_avg.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).parent

# name -> (our StyleGAN3Config fields, with the reference's names alongside in build_reference)
CONFIGS = {
    "t16": dict(resolution=16, z_dim=16, w_dim=16, channel_base=512, channel_max=16, conv_kernel=3,
                use_radial_filters=False, magnitude_ema_beta=0.5 ** (4 / 20e3)),
    "r16": dict(resolution=16, z_dim=16, w_dim=16, channel_base=1024, channel_max=32, conv_kernel=1,
                use_radial_filters=True, magnitude_ema_beta=0.5 ** (4 / 20e3)),
    "t32": dict(resolution=32, z_dim=16, w_dim=16, channel_base=256, channel_max=8, conv_kernel=3,
                use_radial_filters=False, magnitude_ema_beta=0.5 ** (4 / 20e3), batch=2),
}
SEED = 123
BATCH = 3  # latents per config, unless it names its own `batch`


def digest(state: dict) -> dict:
    """name -> (shape, sha256 of the float32 bytes, float64 sum, float64 sum of squares)."""
    out = {}
    for k, v in state.items():
        v = v.detach().to(torch.float32).contiguous()
        out[k] = {"shape": list(v.shape), "sha256": hashlib.sha256(v.numpy().tobytes()).hexdigest(),
                  "sum": float(v.double().sum()), "sumsq": float(v.double().square().sum())}
    return out


def build_reference(cfg: dict):
    from training.networks_stylegan3 import Generator

    return Generator(z_dim=cfg["z_dim"], c_dim=0, w_dim=cfg["w_dim"], img_resolution=cfg["resolution"],
                     img_channels=3, mapping_kwargs={"num_layers": 2}, channel_base=cfg["channel_base"],
                     channel_max=cfg["channel_max"], conv_kernel=cfg["conv_kernel"],
                     use_radial_filters=cfg["use_radial_filters"], magnitude_ema_beta=cfg["magnitude_ema_beta"])


@torch.no_grad()
def record(name: str, cfg: dict) -> dict:
    torch.manual_seed(SEED)
    G = build_reference(cfg).eval()
    init = digest(G.state_dict())
    z = torch.randn([cfg.get("batch", BATCH), cfg["z_dim"]], generator=torch.Generator().manual_seed(SEED + 1))
    images = G(z, None)
    images_update = G(z, None, update_emas=True)  # the first pass with EMA updates: w_avg and magnitudes move
    buffers = {k: v.clone() for k, v in G.state_dict().items() if k.endswith(("w_avg", "magnitude_ema"))}
    after = G(z, None)
    truncated = G(z, None, truncation_psi=0.5)
    return {"config": cfg, "seed": SEED, "init": init, "z": z, "images": images, "images_update": images_update,
            "buffers": buffers, "images_after": after, "images_truncated": truncated}


def main(reference: str) -> None:
    sys.path.insert(0, reference)
    if importlib.util.find_spec("pkg_resources") is None:
        # The reference's conv2d_gradfix imports pkg_resources for parse_version only (setuptools >= 81
        # dropped it); packaging's parse is what it wraps.
        from packaging.version import parse

        sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=parse)
    for name, cfg in CONFIGS.items():
        buf = io.BytesIO()
        torch.save(record(name, cfg), buf)
        path = HERE / f"{name}.pt.gz"
        path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
        print(f"{path}: {path.stat().st_size / 1024:.1f} kB")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/stylegan3")
