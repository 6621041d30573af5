"""models.arch.ARCHS is the one list of architectures: generation, the stage plan and the serve page ask a family's
traits there, never compare its name. Proof: each family registered a second time under another name draws, plans
and serves exactly as under its own name (before the registry, the other name was an unknown architecture)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.arch import ARCHS, build_arch
from models.checkpoint import save_atomic
from models.generate import images_from_seeds, interpolation_frames, load_generator
from models.trainer import TrainConfig
from tasks.serving.app import Explorer, InputError
from tasks.common.settings import TrainSettings
from tasks.training.stages import plan_stages

NET = dict(channel_base=256, channel_max=16, z_dim=16)
W_NET = {**NET, "w_dim": 16}  # StyleGAN's: a mapping network
TINY = {"stylegan2": W_NET, "stylegan3-t": W_NET, "stylegan3-r": W_NET, "pggan": NET}


def snapshot(folder: Path, record: dict, G: torch.nn.Module) -> Path:
    """A network file as best.pt is written: the recorded architecture and G_ema."""
    folder.mkdir()
    return save_atomic({"arch": record, "G_ema": G.state_dict()}, folder / "best.pt")


def outcome(call, *args):
    """What a request gets: its result, or its one-line refusal."""
    try:
        return call(*args)
    except InputError as e:
        return f"refused: {e}"


@pytest.mark.parametrize("name", list(ARCHS))
def test_a_family_under_another_name_draws_plans_and_serves_the_same(name, tmp_path, monkeypatch, one_torch_thread):
    assert set(TINY) == set(ARCHS)  # a new family gets a tiny net here
    torch.manual_seed(0)
    built = build_arch(TrainConfig(arch=name, resolution=16, batch=4, net=TINY[name]))
    # A PGGAN half way through growing to 8x8 (its own stage and fade-in alpha), so the stages it offers are tested.
    record = {**built.describe(), **({"stage": 1, "alpha": 0.5} if ARCHS[name].progressive else {})}
    monkeypatch.setitem(ARCHS, "renamed", ARCHS[name])
    files = {n: snapshot(tmp_path / n, {**record, "name": n}, built.G) for n in (name, "renamed")}

    # Generation: images and a morph, byte for byte, with a truncation psi where the family has one.
    psi = 0.7 if ARCHS[name].truncation else 1.0
    drawn = {}
    for n, file in files.items():
        G, arch = load_generator(file)
        drawn[n] = (images_from_seeds(G, arch, [1, 2], psi), interpolation_frames(G, arch, [1, 2], 4, psi))
    assert all(np.array_equal(a, b) for a, b in zip(drawn[name], drawn["renamed"]))

    # The training plan: cycles, or one stage per resolution.
    p = TrainSettings(kimg=0, cycles=2, cycle_kimg=0.02, fade_kimg=0.01, stabilize_kimg=0.01)
    assert plan_stages("renamed", 16, None, p) == plan_stages(name, 16, None, p)

    # The serve page: its info JSON, the sizes offered, and the same answers to the same requests.
    served = {}
    for n, file in files.items():
        explorer = Explorer(snapshot=file)
        answers = [outcome(explorer.image, None, 3, trunc, res) for trunc in (1.0, 0.5) for res in (None, 4, 8, 32, 12)]
        served[n] = ({**explorer.info(None), "arch": "-"},
                     [a.replace(f"({n})", "(-)") if isinstance(a, str) else a.tobytes() for a in answers])
    assert served["renamed"] == served[name]
    assert any(isinstance(a, str) for a in served[name][1])  # refusals (a size not offered) compared too
    assert served[name][0]["truncation"] is ARCHS[name].truncation
