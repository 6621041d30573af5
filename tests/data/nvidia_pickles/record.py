"""Record tiny NVIDIA network pickles and the images NVIDIA's own code generates from them.

NOT run by the tests. It runs NVIDIA's code (which execs the source embedded in its pickles), so run it
only on scratch copies, never on the repository:

    git --git-dir=<mirror of NVlabs/stylegan2-ada-pytorch> archive HEAD | tar -x -C /tmp/ni/sg2
    git --git-dir=<mirror of NVlabs/stylegan3> archive HEAD | tar -x -C /tmp/ni/sg3
    # stylegan3's torch_utils/ops/{conv2d,grid_sample}_gradfix.py import pkg_resources, gone from recent
    # setuptools: in the scratch copy, `from packaging.version import parse as parse_version` instead.
    PYTHONPATH= .venv/bin/python tests/data/nvidia_pickles/record.py --sg2 /tmp/ni/sg2 --sg3 /tmp/ni/sg3

Per network (stylegan2 from stylegan2-ada-pytorch's training/networks.py; stylegan2-sg3 from stylegan3's
training/networks_stylegan2.py; stylegan3-t and stylegan3-r from stylegan3's training/networks_stylegan3.py
with its networks_stylegan2 discriminator):
- G and D built from kwargs as each repository's train.py assembles them, with non-default values
  (z_dim 64, w_dim 16, small channel_base/max, 16x16), then every parameter and buffer perturbed so that
  biases, noise strengths, w_avg and magnitude EMAs are not at their initial constants (G_ema differs
  from G). The snapshot dict is pickled exactly as the training loops do (G, D, G_ema, augment_pipe,
  training_set_kwargs; each network a deep copy in eval mode on the CPU), then gzipped.
- The pickle is loaded back with the reference's legacy.load_network_pkl and images are made with the
  lines of its generate.py / gen_images.py (z from RandomState(seed), noise_mode const, the identity
  input transform for StyleGAN3) for seeds 0-3 at truncation 0.7 and 1.0, on the CPU: expected.npz
  holds them as uint8 [4, H, W, 3] per `<name>_psi<psi>`.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = [0, 1, 2, 3]
PSIS = [0.7, 1.0]

# name -> (which repository, G kwargs, D kwargs) as train.py would pass them (class_name included).
NETS = {
    "stylegan2": ("sg2",
                  dict(class_name="training.networks.Generator", z_dim=64, w_dim=16,
                       mapping_kwargs=dict(num_layers=2),
                       synthesis_kwargs=dict(channel_base=128, channel_max=8, num_fp16_res=4, conv_clamp=256)),
                  dict(class_name="training.networks.Discriminator", channel_base=128, channel_max=8,
                       num_fp16_res=4, conv_clamp=256, block_kwargs={}, mapping_kwargs={},
                       epilogue_kwargs=dict(mbstd_group_size=2))),
    # stylegan3's own StyleGAN2 (train.py --cfg stylegan2): flat synthesis kwargs, other defaults (conv_clamp
    # 256, num_fp16_res 4, w_avg_beta 0.998), left to those defaults here.
    "stylegan2-sg3": ("sg3",
                      dict(class_name="training.networks_stylegan2.Generator", z_dim=64, w_dim=16,
                           mapping_kwargs=dict(num_layers=3), channel_base=128, channel_max=8,
                           fused_modconv_default="inference_only"),
                      dict(class_name="training.networks_stylegan2.Discriminator", channel_base=128,
                           channel_max=8, block_kwargs=dict(freeze_layers=0), mapping_kwargs={},
                           epilogue_kwargs=dict(mbstd_group_size=4))),
    "stylegan3-t": ("sg3",
                    dict(class_name="training.networks_stylegan3.Generator", z_dim=64, w_dim=16,
                         mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=4,
                         num_fp16_res=4, conv_clamp=256, magnitude_ema_beta=0.5 ** (8 / (20 * 1e3))),
                    dict(class_name="training.networks_stylegan2.Discriminator", channel_base=128,
                         channel_max=8, num_fp16_res=4, conv_clamp=256, block_kwargs=dict(freeze_layers=0),
                         mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4))),
    "stylegan3-r": ("sg3",
                    dict(class_name="training.networks_stylegan3.Generator", z_dim=64, w_dim=16,
                         mapping_kwargs=dict(num_layers=2), channel_base=512, channel_max=8,
                         num_fp16_res=4, conv_clamp=256, magnitude_ema_beta=0.5 ** (8 / (20 * 1e3)),
                         conv_kernel=1, use_radial_filters=True),
                    dict(class_name="training.networks_stylegan2.Discriminator", channel_base=128,
                         channel_max=8, num_fp16_res=4, conv_clamp=256, block_kwargs=dict(freeze_layers=0),
                         mapping_kwargs={}, epilogue_kwargs=dict(mbstd_group_size=4))),
}
RESOLUTION = 16


def _perturb(module, gen):
    """Move every tensor away from its initial constant (so a loader that drops or defaults one fails)."""
    import torch

    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if name.endswith(("resample_filter", "up_filter", "down_filter", "freqs", "phases", "transform")):
            continue  # constants of the architecture (and, for `transform`, what gen_images sets)
        if name.endswith("magnitude_ema"):
            t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
        elif name.endswith("noise_strength"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.2)
        elif name.endswith("w_avg"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.5)
        elif name.endswith("input.affine.weight"):
            t.copy_(torch.randn(t.shape, generator=gen) * 0.1)  # a rotation/translation per w (init: zero)
        else:
            t.add_(torch.randn(t.shape, generator=gen) * 0.1 * (t.std() if t.numel() > 1 else 1))


def _spread_output(G, c_dim):
    """Scale the last layer so images span about +-0.5 (random tiny nets come out flat or saturated)."""
    import numpy as np
    import torch

    if hasattr(G.synthesis, "layer_names"):  # StyleGAN3: the last layer is the ToRGB
        rgb = [getattr(G.synthesis, G.synthesis.layer_names[-1])]
    else:  # StyleGAN2: the image is the sum of every block's ToRGB
        rgb = [m.torgb for m in G.synthesis.children()]
    z = torch.from_numpy(np.random.RandomState(99).randn(4, G.z_dim))
    std = float(G(z, torch.zeros([4, c_dim]), noise_mode="const").std())
    for m in rgb:
        m.weight.mul_(0.5 / std)
        m.bias.mul_(0.5 / std)


def record_one(name: str, ref: Path, out: Path) -> None:
    """In a process of its own (the two repositories share package names): pickle, reload, generate."""
    sys.path.insert(0, str(ref))
    import numpy as np
    import torch

    import dnnlib
    import legacy

    repo, g_kwargs, d_kwargs = NETS[name]
    torch.manual_seed(123)
    common = dict(c_dim=0, img_resolution=RESOLUTION, img_channels=3)
    g_kwargs = dnnlib.EasyDict(copy.deepcopy(g_kwargs))
    g_kwargs.mapping_kwargs = dnnlib.EasyDict(g_kwargs.mapping_kwargs)
    d_kwargs = dnnlib.EasyDict(copy.deepcopy(d_kwargs))
    for k in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs"):
        d_kwargs[k] = dnnlib.EasyDict(d_kwargs[k])
    if "synthesis_kwargs" in g_kwargs:
        g_kwargs.synthesis_kwargs = dnnlib.EasyDict(g_kwargs.synthesis_kwargs)
    # The training loop's lines.
    G = dnnlib.util.construct_class_by_name(**g_kwargs, **common).train().requires_grad_(False)
    D = dnnlib.util.construct_class_by_name(**d_kwargs, **common).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    augment_pipe = dnnlib.util.construct_class_by_name(
        class_name="training.augment.AugmentPipe", xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1,
        xfrac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1).train().requires_grad_(False)
    augment_pipe.p.copy_(torch.as_tensor(0.125))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in (G, D, G_ema):
            _perturb(m, gen)
        for m in (G, G_ema):
            _spread_output(m, common["c_dim"])
    training_set_kwargs = dict(class_name="training.dataset.ImageFolderDataset", path="~/datasets/tiny.zip",
                               use_labels=False, max_size=100, xflip=False, resolution=RESOLUTION)
    if repo == "sg2":  # stylegan2-ada-pytorch training_loop.py
        snapshot_data = dict(training_set_kwargs=dict(training_set_kwargs))
        for key, module in [("G", G), ("D", D), ("G_ema", G_ema), ("augment_pipe", augment_pipe)]:
            snapshot_data[key] = copy.deepcopy(module).eval().requires_grad_(False).cpu()
    else:  # stylegan3 training_loop.py
        snapshot_data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe,
                             training_set_kwargs=dict(training_set_kwargs))
        for key, value in snapshot_data.items():
            if isinstance(value, torch.nn.Module):
                snapshot_data[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
    buf = io.BytesIO()
    pickle.dump(snapshot_data, buf)
    (out / f"{name}.pkl.gz").write_bytes(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))

    # generate.py / gen_images.py, on the CPU.
    G = legacy.load_network_pkl(io.BytesIO(buf.getvalue()))["G_ema"]
    device = torch.device("cpu")
    images = {}
    for psi in PSIS:
        rows = []
        for seed in SEEDS:
            label = torch.zeros([1, G.c_dim], device=device)
            z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).to(device)
            if hasattr(G.synthesis, "input"):
                m = np.eye(3)  # make_transform((0, 0), 0), the default translate/rotate
                m = np.linalg.inv(m)
                G.synthesis.input.transform.copy_(torch.from_numpy(m))
            img = G(z, label, truncation_psi=psi, noise_mode="const")
            img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
            rows.append(img[0].cpu().numpy())
        images[f"{name}_psi{psi}"] = np.stack(rows)
    np.savez_compressed(out / f"{name}-expected.npz", **images)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in (("G", G), ("D", D))}
    spread = {k: float(v.astype(float).std()) for k, v in images.items()}
    print(json.dumps({"name": name, "pickle_bytes": len(buf.getvalue()),
                      "gz_bytes": (out / f"{name}.pkl.gz").stat().st_size, "params": params, "image_std": spread}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sg2", type=Path, help="scratch checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--sg3", type=Path, help="scratch checkout of NVlabs/stylegan3")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--only", help="one network name (internal: each runs in a process of its own)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only:
        repo = NETS[args.only][0]
        record_one(args.only, getattr(args, repo), args.out)
        return
    for name, (repo, _, _) in NETS.items():
        if getattr(args, repo) is None:
            print(f"skipping {name}: no --{repo}")
            continue
        subprocess.run([sys.executable, __file__, "--only", name, f"--{repo}", str(getattr(args, repo)),
                        "--out", str(args.out)], check=True)


if __name__ == "__main__":
    main()
