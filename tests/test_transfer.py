"""Transfer learning: a run started from a network file (`--resume-from`, `train.resume_from`) takes the file's
architecture, refuses options that contradict it, continues like any run, and Freeze-D keeps the pretrained
discriminator's first layers bit for bit (alone, with ADA, under DDP). The same setting travels through the
train flow, `ganflow train submit` and the DVC train stage. Tiny CPU networks, a few steps each.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import flows.cli  # noqa: F401  (imported at collection, not under a test's capsys: Prefect sets up its logging
import tasks.training.stages  # noqa: F401  then, and a handler bound to a closed capture stream breaks later flows)
from models.checkpoint import latest_checkpoint, list_checkpoints
from models.data import load_images
from models.trainer import TrainConfig, Trainer
from models.transfer import RUNTIME_KEYS, TransferError, load_networks
from tests.conftest import PARAMS, ROOT, write_curated
from tests.test_dvc_pipeline import env  # noqa: F401  (the fixture: the user's shell with `dvc` and `ganflow`)

# The source network: test_trainer's small StyleGAN2 at 32² (no ADA, R1 every 2 steps), 4 images per step.
SOURCE_NET = dict(channel_base=512, channel_max=64, z_dim=32, w_dim=32, mapping_layers=2)
SOURCE = dict(arch="stylegan2", resolution=32, batch=4, snapshot_kimg=0.008, seed=5, r1_interval=2, ada_target=0.0,
              net=SOURCE_NET)
# params.yaml for the runs that start from it: everything about the architecture says something else.
OTHER_TRAIN = dict(arch="pggan", resolution=64, batch=4, channel_base=256, channel_max=32,
                   net=dict(z_dim=16, w_dim=16, mapping_layers=4), ada_target=0.0, snapshot_kimg=0.008,
                   cycle_kimg=0.008, retries=0, retry_delay_seconds=0, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _threads(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("transfer")


@pytest.fixture(scope="module")
def dataset(work) -> Path:
    return write_curated(work / "data")  # 12 images at 32²


@pytest.fixture(scope="module")
def source(work, dataset) -> Path:
    """A snapshot of another run (2 steps): the network file the tests start from."""
    from tasks.training.run import run_training

    run_training(TrainConfig(**SOURCE), dataset, work / "source", 0.008)
    return list_checkpoints(work / "source")[-1][1]


@pytest.fixture(scope="module")
def best(work, source) -> Path:
    """The same snapshot as `ganflow evaluate` exports it: G_ema and arch only."""
    from tasks.evaluation.evaluate import export_best

    return export_best(source, work / "best.pt")


@pytest.fixture(scope="module")
def params(work) -> Path:
    data = yaml.safe_load(PARAMS.read_text())
    data["train"].update(OTHER_TRAIN)
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shape(arch: dict) -> dict:
    return {k: v for k, v in arch["net"].items() if k not in RUNTIME_KEYS}


def _distance(a: dict, b: dict) -> float:
    return sum((a[k].float() - b[k].float()).norm().item() for k in b)


def _train(*args: str) -> int:
    from flows.cli import main

    return main(["train", *args])


# ---------------------------------------------------------------------------------------------- the CLI

def test_fine_tune_takes_the_architecture_from_the_file_and_continues_like_any_run(work, dataset, source, params,
                                                                                   capsys):
    run = work / "fine-tuned"

    def cmd(kimg: str, resume_from: Path | None = source, freeze_d: str = "3") -> list[str]:
        start = ["--resume-from", str(resume_from), "--freeze-d", freeze_d] if resume_from else []
        return ["--data", str(dataset), "--run-dir", str(run), "--params", str(params), "--kimg", kimg, *start]

    assert _train(*cmd("0.008")) == 0
    err = capsys.readouterr().err
    assert f"architecture from {source}: stylegan2 at 32² (z_dim 32, w_dim 32, mapping_layers 2, channel_base 512, " \
           "channel_max 64)" in err
    assert "it replaces train.arch pggan, train.resolution 64, train.channel_base 256, train.channel_max 32, " \
           "train.net.mapping_layers 4, train.net.w_dim 16, train.net.z_dim 16" in err
    state = latest_checkpoint(run)[1]
    src = torch.load(source, weights_only=True)
    assert state["arch"]["name"] == "stylegan2" and _shape(state["arch"]) == _shape(src["arch"])
    cfg = state["config"]
    assert (cfg["arch"], cfg["resolution"], cfg["freeze_d"]) == ("stylegan2", 32, 3)
    assert cfg["transfer_from"] == str(source) and cfg["transfer_sha256"] == _sha256(source)
    assert (cfg["ada_kimg"], cfg["ema_rampup"]) == (100.0, 0.0)  # the reference's settings for --resume
    assert (state["nimg"], state["step"]) == (8, 2)  # counters start afresh

    # Two steps away from the file's weights, not from the initialization of the run's seed (params.yaml's 0).
    fresh = Trainer(TrainConfig(**{**SOURCE, "seed": 0}), load_images(dataset, 32), work / "unused")
    assert _distance(state["G"], src["G"]) < 0.1 * _distance(fresh.G.state_dict(), src["G"])
    assert _distance(state["D"], src["D"]) < 0.1 * _distance(fresh.D.state_dict(), src["D"])

    # The same command continues the run (the file's architecture again, the same freeze_d)...
    assert _train(*cmd("0.016")) == 0
    assert f"resumed from {run / 'checkpoints' / 'ckpt-000000.008.pt'}" in capsys.readouterr().out
    assert latest_checkpoint(run)[1]["nimg"] == 16
    # ... also from a copy of the file somewhere else (its sha256 is what the run records)...
    copy = work / "moved" / "net.pt"
    copy.parent.mkdir()
    shutil.copy(source, copy)
    assert _train(*cmd("0.024", resume_from=copy)) == 0
    capsys.readouterr()
    # ... but not with another freeze_d, nor without the file.
    assert _train(*cmd("0.032", freeze_d="4")) == 2
    assert "(freeze_d differ from this one's)" in capsys.readouterr().err
    assert _train(*cmd("0.032", resume_from=None)) == 2  # params.yaml's pggan alone: it has no w_dim
    assert "train.net keys 'w_dim', 'mapping_layers' are not network settings of pggan" in capsys.readouterr().err
    assert _train(*cmd("0.032", resume_from=None), "--arch", "stylegan2") == 2
    assert f"this run started from the networks of {copy}: repeat --resume-from" in capsys.readouterr().err
    assert [k for k, _ in list_checkpoints(run)] == [0.008, 0.016, 0.024]


def test_other_starting_networks_do_not_continue_a_run(work, dataset, source, best, params, capsys):
    run = work / "fine-tuned-2"
    base = ["--data", str(dataset), "--run-dir", str(run), "--params", str(params), "--kimg", "0.008"]
    assert _train(*base, "--resume-from", str(source)) == 0
    capsys.readouterr()
    assert _train(*base[:-1], "0.016", "--resume-from", str(best)) == 2
    err = capsys.readouterr().err
    assert "transfer_sha256" in err and f"{best} is not the network file this run started from" in err
    # Restarting on purpose sets the old run aside and starts from the other file.
    assert _train(*base[:-1], "0.016", "--resume-from", str(best), "--restart-on-change") == 0
    assert latest_checkpoint(run)[1]["config"]["transfer_sha256"] == _sha256(best)
    assert (run / "superseded" / "1" / "checkpoints" / "ckpt-000000.008.pt").is_file()


def test_options_that_contradict_the_file_are_refused_in_one_line(work, dataset, source):
    """The paper256 trap: options for another network than the file's. Every differing key is named with the
    file's value and the given one; options that agree are fine; nothing is trained."""
    run = work / "refused"
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "train", "--data", str(dataset), "--run-dir", str(run),
         "--resume-from", str(source), "--arch", "pggan", "--resolution", "64", "--channel-base", "1024",
         "--channel-max", "64", "--kimg", "0.004"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("ganflow train: error: ") and "Traceback" not in proc.stderr
    assert "arch (file stylegan2, given pggan), resolution (file 32, given 64), channel_base (file 512, given 1024)" \
           in line
    assert "channel_max" not in line  # 64 is the file's: it agrees
    assert not run.exists()


def test_best_pt_starts_g_from_g_ema_and_a_fresh_discriminator(work, dataset, best, source):
    from tasks.training.run import run_training
    from tasks.training.transfer import transfer_config

    cfg, _ = transfer_config(TrainConfig(**{**SOURCE, "seed": 7}), best)
    trainer = Trainer(cfg, load_images(dataset, 32), work / "unused")
    fresh_D = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    notes = trainer.start_from(load_networks(best))
    assert notes == ["no G in the file: G starts as its G_ema",
                     "no discriminator in the file: D starts from random weights"]
    g_ema = torch.load(source, weights_only=True)["G_ema"]
    assert all(torch.equal(trainer.G.state_dict()[k], v) for k, v in g_ema.items())
    assert all(torch.equal(trainer.D.state_dict()[k], v) for k, v in fresh_D.items())

    result = run_training(TrainConfig(**SOURCE), dataset, work / "from-best", 0.004, resume_from=best)
    assert result.transferred_from == str(best) and "no discriminator" in result.transfer_notes[1]
    # Freeze-D keeps pretrained layers: with no discriminator in the file there are none to keep.
    with pytest.raises(TransferError, match="this file has no discriminator"):
        run_training(TrainConfig(**{**SOURCE, "freeze_d": 2}), dataset, work / "from-best-frozen", 0.004,
                     resume_from=best)


def test_a_dataset_smaller_than_the_network_is_refused(work, source):
    from models.data import DatasetError
    from tasks.training.run import run_training

    small = write_curated(work / "small", n=4, side=16)
    with pytest.raises(DatasetError, match=r"holds 16² images and .* is a 32² network: curate at 32"):
        run_training(TrainConfig(**SOURCE), small, work / "small-run", 0.004, resume_from=source)


def test_bad_network_files_get_one_line_errors(work):
    junk = work / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(TransferError, match="does not load as a ganflow network file"):
        load_networks(junk)
    other = work / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(TransferError, match="holds no networks with their architecture"):
        load_networks(other)
    (work / "net.onnx").write_bytes(b"")
    with pytest.raises(TransferError, match="not .onnx"):
        load_networks(work / "net.onnx")
    with pytest.raises(FileNotFoundError):
        load_networks(work / "missing.pt")


def test_freeze_d_needs_a_network_to_keep(params):
    from tasks.common.settings import ParamsError
    from tasks.common.settings import TrainSettings, load

    with pytest.raises(ParamsError, match="train.freeze_d 3 keeps a pretrained discriminator's first layers"):
        load(TrainSettings, params, freeze_d=3)
    assert load(TrainSettings, params, freeze_d=3, resume_from="x.pt").freeze_d == 3


# ---------------------------------------------------------------------------------------------- NVIDIA pickles

PICKLES = ROOT / "tests" / "data" / "nvidia_pickles"  # tiny networks recorded from NVIDIA's code (16², odd widths)


@pytest.fixture(scope="module")
def dataset16(work) -> Path:
    return write_curated(work / "data16", n=8, side=16)


@pytest.mark.parametrize("name", ["stylegan2", "stylegan3-t", "stylegan3-r"])
def test_nvidia_pickle_fine_tunes_with_its_recorded_architecture(work, dataset16, params, name, capsys):
    """A .pkl straight from NVIDIA's code: the run is the pickle's family, widths and latent sizes (G and D of
    the StyleGAN3 pickles even have widths off the --cfg rule), starts from its tensors, and Freeze-D works."""
    from models.transfer import arch_differences

    pkl = PICKLES / f"{name}.pkl.gz"
    imported = load_networks(pkl)
    run = work / f"from-{name}"
    assert _train("--data", str(dataset16), "--run-dir", str(run), "--params", str(params), "--resume-from", str(pkl),
                  "--freeze-d", "2", "--kimg", "0.004", "--batch", "4") == 0
    assert f"architecture from {pkl}: {name} at 16²" in capsys.readouterr().err
    state = latest_checkpoint(run)[1]
    assert arch_differences(state["arch"], imported.arch) == []
    assert state["config"]["arch"] == name and state["config"]["transfer_sha256"] == _sha256(pkl)
    for key in ("b16.fromrgb.weight", "b16.conv0.weight"):  # frozen: the pickle's own tensors
        assert torch.equal(state["D"][key], imported.D[key])
    assert not torch.equal(state["D"]["b16.conv1.weight"], imported.D["b16.conv1.weight"])
    moved = max((state["G"][k].float() - v.float()).abs().max().item() for k, v in imported.G.items())
    assert 0 < moved < 0.05  # one Adam step from the pickle's G


def test_imported_network_file_keeps_its_family(work, dataset16, capsys):
    from flows.cli import main

    out = work / "imported-t.pt"
    assert main(["import", str(PICKLES / "stylegan3-t.pkl.gz"), "--out", str(out)]) == 0
    capsys.readouterr()
    assert _train("--data", str(dataset16), "--run-dir", str(work / "imported-run"), "--resume-from", str(out),
                  "--arch", "stylegan2", "--resolution", "16", "--kimg", "0.004") == 2
    err = capsys.readouterr().err
    assert f"{out} is a stylegan3-t network at 16²" in err and "arch (file stylegan3-t, given stylegan2)" in err
    assert "resolution" not in err.split("contradict it:")[1]  # 16 agrees


# ---------------------------------------------------------------------------------------------- Freeze-D

# The reference's layer indices (DiscriminatorBlock.first_layer_idx + its trainable_gen) for a 32² resnet D:
# b32: fromrgb 0, conv0 1, conv1 2, skip 3; b16: conv0 4, conv1 5, skip 6; b8: conv0 7, conv1 8, skip 9.
FROZEN_5 = ["b32.fromrgb.weight", "b32.fromrgb.bias", "b32.conv0.weight", "b32.conv0.bias", "b32.conv1.weight",
            "b32.conv1.bias", "b32.skip.weight", "b16.conv0.weight", "b16.conv0.bias"]


def _split(D_state: dict, frozen: list[str]) -> tuple[dict, dict]:
    return ({k: v for k, v in D_state.items() if k in frozen}, {k: v for k, v in D_state.items() if k not in frozen})


def test_freeze_d_keeps_the_first_layers_bit_identical_with_ada(work, dataset, source):
    from tasks.training.transfer import transfer_config

    cfg, _ = transfer_config(TrainConfig(**{**SOURCE, "freeze_d": 5, "ada_target": 0.6}), source)
    cfg = TrainConfig(**{**cfg.__dict__, "ada_kimg": 0.1, "snapshot_kimg": 1.0})  # p moves within a few steps
    trainer = Trainer(cfg, load_images(dataset, 32), work / "frozen")
    trainer.start_from(load_networks(source))
    assert trainer.frozen == FROZEN_5
    before = {k: v.clone() for k, v in trainer.D.state_dict().items()}
    trainer.train(0.064)
    assert float(trainer.augment.p) > 0  # augmentation was on
    frozen_before, trainable_before = _split(before, FROZEN_5)
    frozen_after, trainable_after = _split(trainer.D.state_dict(), FROZEN_5)
    assert all(torch.equal(frozen_after[k], v) for k, v in frozen_before.items())
    assert all(not torch.equal(trainable_after[k], v) for k, v in trainable_before.items()
               if k.endswith("weight")), "every trainable D weight moved"
    assert sum(p.numel() for g in trainer.opt_D.param_groups for p in g["params"]) == \
        sum(v.numel() for v in trainable_before.values())


def test_freeze_d_counts_layers_as_the_reference_and_refuses_what_it_cannot_freeze():
    from models.pggan import Discriminator as PGGAND, PGGANConfig
    from models.stylegan2 import Discriminator, StyleGAN2Config
    from models.transfer import discriminator_layers, freeze_discriminator

    D = Discriminator(StyleGAN2Config(resolution=256, channel_base=512, channel_max=16, mbstd_group=2))
    names = [n for n, _ in discriminator_layers(D)]
    assert len(names) == 19 and names[:5] == ["b256.fromrgb", "b256.conv0", "b256.conv1", "b256.skip", "b128.conv0"]
    with pytest.raises(TransferError, match="freeze_d 20 is more than this discriminator's 19 layers"):
        freeze_discriminator(D, 20)
    orig = Discriminator(StyleGAN2Config(resolution=32, channel_base=512, channel_max=16, d_architecture="orig"))
    assert [n for n, _ in discriminator_layers(orig)] == ["b32.fromrgb", "b32.conv0", "b32.conv1", "b16.conv0",
                                                           "b16.conv1", "b8.conv0", "b8.conv1"]
    with pytest.raises(TransferError, match="not on Discriminator .*PGGAN"):
        freeze_discriminator(PGGAND(PGGANConfig(resolution=16, channel_base=64, channel_max=16)), 1)


def _ddp_worker(rank: int, world: int, store: str, cfg: dict, data: str, source: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        trainer = Trainer(TrainConfig(**cfg), load_images(data, 32), Path(out) / "run")
        trainer.start_from(load_networks(source))
        trainer.augment.p.fill_(0.5)  # augment from the first step (the controller then moves p slowly)
        trainer.snapshot = lambda: None  # the steps are under test, not the checkpoint
        trainer.train(0.032)
        if rank == 0:
            torch.save({"D": trainer.D.state_dict(), "p": float(trainer.augment.p)}, Path(out) / "ddp.pt")
    finally:
        dist.destroy_process_group()


def test_freeze_d_under_ddp_with_ada(work, dataset, source):
    """Two gloo processes: the frozen layers are the file's after the steps, on every replica's average."""
    from tasks.training.transfer import transfer_config

    cfg, _ = transfer_config(TrainConfig(**{**SOURCE, "freeze_d": 5, "ada_target": 0.6, "batch": 8}), source)
    cfg = {**cfg.__dict__, "snapshot_kimg": 1.0}
    out = work / "ddp"
    out.mkdir()
    mp.spawn(_ddp_worker, args=(2, str(out / "store"), cfg, str(dataset), str(source), str(out)), nprocs=2)
    ddp = torch.load(out / "ddp.pt", weights_only=True)
    src = torch.load(source, weights_only=True)["D"]
    assert ddp["p"] > 0.4  # augmentation was on throughout
    assert all(torch.equal(ddp["D"][k], src[k]) for k in FROZEN_5)
    assert all(not torch.equal(ddp["D"][k], v) for k, v in src.items() if k not in FROZEN_5 and k.endswith("weight"))


# ---------------------------------------------------------------------------------------------- flows and queue

def test_submit_refuses_what_the_run_would_refuse(work, dataset, source, params, capsys):
    from flows.cli import main

    common = ["--data", str(dataset), "--kimg", "0.008", "--queue", str(work / "refused.sqlite"), "--params",
              str(params), "--run-dir", str(work / "queued-refused")]
    assert main(["train", "submit", *common]) == 2
    assert "--arch and --resolution are required, unless --resume-from" in capsys.readouterr().err
    assert main(["train", "submit", *common, "--resume-from", str(source), "--resolution", "64"]) == 2
    assert "resolution (file 32, given 64)" in capsys.readouterr().err


# No capsys here: Prefect's console log handler would keep the captured stream after the test closes it.
def test_train_flow_and_submit_carry_resume_from_and_freeze_d(work, dataset, source, params, prefect_api):
    from flows.cli import main
    from flows.train import train_flow
    from tasks.manager.launch import train_command
    from tasks.manager.queue import Queue

    result = train_flow(data=str(dataset), run_dir=str(work / "flow"), params=str(params),
                        settings={"kimg": 0.008, "resume_from": str(source), "freeze_d": 2})
    assert (result["arch"], result["resolution"]) == ("stylegan2", 32)  # the file's, not params.yaml's pggan 64²
    assert result["stages"][0]["transferred_from"] == str(source)
    cfg = latest_checkpoint(work / "flow")[1]["config"]
    assert cfg["freeze_d"] == 2 and cfg["transfer_sha256"] == _sha256(source)
    with pytest.raises(TransferError, match=r"resolution \(file 32, given 64\)"):
        train_flow(data=str(dataset), run_dir=str(work / "flow-refused"), params=str(params),
                   settings={"resolution": 64, "kimg": 0.008, "resume_from": str(source)})

    queue = work / "queue.sqlite"
    assert main(["train", "submit", "--data", str(dataset), "--kimg", "0.008", "--queue", str(queue), "--params",
                 str(params), "--run-dir", str(work / "queued"), "--resume-from", os.path.relpath(source),
                 "--freeze-d", "2"]) == 0
    [req] = Queue(queue).list()
    assert req.params["resume_from"] == str(source) and req.params["freeze_d"] == 2  # absolute for the manager
    cmd = train_command(req.params, req.id, python="python")
    assert f"--resume-from={source}" in cmd and "--freeze-d=2" in cmd  # OPTION=VALUE: a value is never an option
    assert "--arch" not in cmd and "--resolution" not in cmd
    # What the manager launches trains from the file.
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = latest_checkpoint(work / "queued")[1]["config"]
    assert cfg["transfer_from"] == str(source) and cfg["freeze_d"] == 2 and cfg["resolution"] == 32


# ---------------------------------------------------------------------------------------------- DVC

def test_dvc_train_stage_depends_on_the_pretrained_folder_and_the_settings():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    assert "data/pretrained" in stage["deps"] and "tasks/training" in stage["deps"]  # transfer.py is in the folder
    assert {"train.resume_from", "train.freeze_d"} <= set(stage["params"])
    # The folder exists in every clone (git keeps its README), or `dvc repro` would miss a dependency.
    tracked = subprocess.run(["git", "ls-files", "data/pretrained"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout.split() == ["data/pretrained/README.md"]
    ignored = subprocess.run(["git", "check-ignore", "data/pretrained/stylegan3-t-ffhqu-256x256.pkl"], cwd=ROOT)
    assert ignored.returncode == 0  # network files never go to git


def test_dvc_train_stage_trains_from_the_pretrained_file_and_again_when_it_is_replaced(env, tmp_path, dataset,
                                                                                       source):
    """dvc.yaml's train stage for real (alone, on a curated dataset put in place): train.resume_from names a file
    in data/pretrained/; replacing its bytes under the same name makes DVC run the stage again, which sets the
    old run aside and starts from the new network."""
    from tasks.training.run import run_training
    from tests.test_dvc_pipeline import TINY, make_project, ran, sh

    project = make_project(env, tmp_path / "clone", train={**TINY["train"], "resume_from": "data/pretrained/net.pt",
                                                           "freeze_d": 2, "kimg": 0.008, "snapshot_kimg": 0.008})
    shutil.copytree(dataset, project / "data/curated/pipeline")
    net = project / "data/pretrained/net.pt"
    shutil.copy(source, net)
    assert ran(sh(env, project, "dvc", "repro", "--single-item", "train")) == {"train"}
    cfg = latest_checkpoint(project / "runs/pipeline")[1]["config"]
    assert (cfg["resolution"], cfg["freeze_d"], cfg["transfer_sha256"]) == (32, 2, _sha256(source))
    assert "didn't change" in sh(env, project, "dvc", "repro", "--single-item", "train")

    run_training(TrainConfig(**{**SOURCE, "seed": 6}), dataset, tmp_path / "other", 0.004)
    shutil.copy(list_checkpoints(tmp_path / "other")[-1][1], net)  # same name, other network
    assert "data/pretrained" in sh(env, project, "dvc", "status", "train")
    assert ran(sh(env, project, "dvc", "repro", "--single-item", "train")) == {"train"}
    cfg = latest_checkpoint(project / "runs/pipeline")[1]["config"]
    assert cfg["transfer_sha256"] == _sha256(net)
    assert (project / "runs/pipeline/superseded/1/checkpoints/ckpt-000000.008.pt").is_file()
