"""tasks/common/settings.py: every params.yaml setting is declared once, with bounds, and every way of giving a bad value
(params.yaml or `dvc exp run -S`, a CLI option, a flow parameter from the Prefect UI) is a one-line error naming the
key, the value and the bound."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from tasks.common.settings import (SECTIONS, TRAIN_FLOW_ONLY, CurateSettings, EvaluateSettings, IngestSettings,
                                   ParamsError, TrainSettings, load)
from tests.conftest import PARAMS, ROOT

FILE = yaml.safe_load(PARAMS.read_text())
TINY = dict(channel_base=256, channel_max=64, net={"z_dim": 32, "w_dim": 32, "mapping_layers": 2})


def _with(tmp_path: Path, section: str, **values) -> Path:
    data = yaml.safe_load(PARAMS.read_text())
    data[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------- one declaration

def test_every_section_of_params_yaml_has_a_model():
    assert sorted(FILE) == sorted(SECTIONS)


def test_params_yaml_is_the_rendering_of_the_settings():
    """Each default and description is written once, in the settings models (the trainer's in
    models/train_config.py); the shipped params.yaml is their rendering: `python -m tasks.common.params_yaml`."""
    from tasks.common.params_yaml import render

    assert PARAMS.read_text() == render(), "params.yaml is stale: python -m tasks.common.params_yaml > params.yaml"
    for model in SECTIONS.values():
        assert all(f.description for f in model.model_fields.values()), model.section
        assert load(model, PARAMS) == model()


def test_every_setting_named_as_a_trainer_field_reaches_the_trainer():
    """A new training setting named as a TrainConfig field needs no line in train_config: each reaches the trainer
    by its name; only train_config's arguments and the settings it converts are built by hand."""
    from models.trainer import TrainConfig
    from tasks.training.stages import train_config

    shared = {f.name for f in dataclasses.fields(TrainConfig)} & set(TrainSettings.model_fields)
    by_name = shared - {"arch", "resolution", "seed", "net"}
    assert by_name >= {"preset", "batch", "loss", "r1_gamma", "ada_target", "fade_kimg", "stabilize_kimg", "snapshot_kimg",
                       "freeze_d", "xflip", "batch_gpu"}
    marked = TrainSettings().model_copy(update={k: f"<{k}>" for k in by_name})  # unvalidated: any value passes
    cfg = train_config(marked, "stylegan2", 32, seed=5)
    assert {k: getattr(cfg, k) for k in by_name} == {k: f"<{k}>" for k in by_name}
    assert (cfg.arch, cfg.resolution, cfg.seed) == ("stylegan2", 32, 5)


def test_dvc_train_stage_reads_every_training_setting_but_the_flows_own():
    """A training setting missing from dvc.yaml's train stage is a change DVC does not see: `dvc repro` would not
    retrain after it. The stage lists every TrainSettings field but the train flow's own (its stage retries); the
    other stages name whole sections or settings that exist."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    listed = stages["train"]["params"]
    assert len(listed) == len(set(listed))
    assert set(listed) == {f"train.{k}" for k in TrainSettings.model_fields if k not in TRAIN_FLOW_ONLY}
    for name, stage in stages.items():
        for entry in stage.get("params", []):
            section, _, key = entry.partition(".")
            assert section in SECTIONS and (not key or key in SECTIONS[section].model_fields), (name, entry)


def test_models_never_import_tasks_prefect_dvc_or_flows():
    for path in sorted((ROOT / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in {"tasks", "flows", "prefect", "dvc", "pydantic"}, (path.name, name)


# ------------------------------------------------------------------------------------------- the fade_kimg bug

def test_fade_kimg_zero_means_no_fade_in_for_the_plan_and_the_network():
    """train.fade_kimg: 0 passed validation while PGGANArch took it as 800: the plan and the growth disagreed."""
    from models.arch import PGGANArch, build_arch
    from tasks.training.stages import plan_stages, train_config

    p = TrainSettings(fade_kimg=0, stabilize_kimg=0.008, channel_base=256, channel_max=64, net={"z_dim": 32})
    arch = build_arch(train_config(p, "pggan", 16))
    assert isinstance(arch, PGGANArch) and arch.schedule.fade_kimg == 0
    plan = plan_stages("pggan", 16, None, p)
    assert [s.end_kimg for s in plan] == [arch.schedule.stage_end_kimg(i) for i in range(3)] == [0.008, 0.016, 0.024]
    assert arch.schedule.at(7) == (0, 1.0) and arch.schedule.at(8) == (1, 1.0)  # the next resolution: in at once


# ------------------------------------------------------------------------------------------- presets and net

@pytest.mark.parametrize("arch,preset,says", [
    ("stylegan2", "bogus", "train.preset 'bogus' is not a preset of stylegan2 (known: auto, stylegan2, paper256, "
                           "paper512, paper1024, cifar)"),
    ("stylegan3-t", "paper256", "train.preset 'paper256' is not a preset of stylegan3-t (known: auto)"),
    ("pggan", "cifar", "train.preset 'cifar' is not a preset of pggan (known: auto, paper, small)"),
])
def test_a_preset_the_family_lacks_is_one_line(tmp_path, arch, preset, says):
    """Any text passed as train.preset, to fail inside the trainer with a message naming no setting."""
    with pytest.raises(ParamsError) as e:
        load(TrainSettings, _with(tmp_path, "train", arch=arch, preset=preset))
    assert str(e.value) == says
    assert load(TrainSettings, _with(tmp_path, "train", arch="pggan", preset="small")).preset == "small"


def test_a_net_key_the_family_lacks_is_one_line(tmp_path):
    """A key of train.net the family's network config has no field for was a TypeError (a traceback) once the
    dataset had loaded."""
    with pytest.raises(ParamsError) as e:
        load(TrainSettings, _with(tmp_path, "train", net={"z_dim": 32, "bogus": 1}))
    assert str(e.value).startswith("train.net key 'bogus' is not a network setting of stylegan2 (known: z_dim, "
                                   "w_dim, mapping_layers, ") and "\n" not in str(e.value)
    with pytest.raises(ParamsError, match=r"^train.net keys 'w_dim', 'mbstd_group' are not network settings of "
                                          r"pggan \(known: z_dim, channel_base, "):
        load(TrainSettings, PARAMS, arch="pggan", net={"z_dim": 32, "w_dim": 32, "mbstd_group": 2})
    # Started from a network file, the run's family is the file's: a key of any family passes here.
    assert load(TrainSettings, PARAMS, resume_from="x.pt", net={"g_channel_base": 512}).net == {"g_channel_base": 512}


def _built_value(arch, key: str):
    """The value the built networks have for a `net` key (StyleGAN3: G's config, D's, G's widths)."""
    d_net = getattr(arch, "d_net", None)
    if key.startswith("g_channel_"):
        return getattr(arch.net, key[2:])
    if d_net is not None and (key in ("channel_base", "channel_max", "mbstd_group") or not hasattr(arch.net, key)):
        return getattr(d_net, key)
    return getattr(arch.net, key)


def test_the_presets_and_net_keys_allowed_are_those_models_build():
    """The names the settings accept come from models/ (each models.arch.ARCHS family): every preset allowed builds and
    every other is refused, and every net key allowed builds (restating the value the network has) while an
    unknown one fails there too."""
    from models import pggan, stylegan2
    from models.arch import ARCHS, build_arch
    from models.arch import family

    def presets(arch: str) -> tuple[str, ...]:
        return family(arch).presets()

    def net_keys(arch: str) -> tuple[str, ...]:
        return family(arch).net_keys()

    from models.trainer import TrainConfig

    assert presets("stylegan2") == stylegan2.PRESETS and presets("pggan") == ("auto", *pggan.PRESETS)
    description = TrainSettings.model_fields["preset"].description or ""
    for arch in ARCHS:
        tiny = {k: v for k, v in {"channel_base": 64, "channel_max": 16, "z_dim": 8, "w_dim": 8}.items()
                if k in net_keys(arch)}
        for name in presets(arch):
            build_arch(TrainConfig(arch=arch, resolution=16, preset=name, batch=4, net=tiny))
            assert name in description, name
        others = {name for a in ARCHS for name in presets(a)} - set(presets(arch)) | {"bogus"}
        for name in sorted(others):  # another family's preset is refused by this one's too
            with pytest.raises(ValueError):
                build_arch(TrainConfig(arch=arch, resolution=16, preset=name, batch=4, net=tiny))
        built = build_arch(TrainConfig(arch=arch, resolution=16, batch=4, net=tiny))
        restated = {k: _built_value(built, k) for k in net_keys(arch)}
        assert build_arch(TrainConfig(arch=arch, resolution=16, batch=4, net=restated)).describe() == built.describe()
        with pytest.raises((TypeError, ValueError)):
            build_arch(TrainConfig(arch=arch, resolution=16, batch=4, net={**tiny, "bogus": 1}))


# ------------------------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("section,key,value,says", [
    ("train", "kimg", -1, "train.kimg -1 is not a finite number from 0 to 1000000"),
    ("train", "fade_kimg", -0.5, "train.fade_kimg -0.5 is not a finite number from 0 to 1000000"),
    ("train", "snapshot_kimg", 0, "train.snapshot_kimg 0 is not a finite number from 0.001 to 1000000"),
    ("train", "resolution", 48, "train.resolution 48 is not a power of two from 4 to 1024"),
    ("train", "arch", "gan", "train.arch 'gan' is not one of stylegan2, stylegan3-t, stylegan3-r, pggan"),
    ("train", "ada_target", 1.5, "train.ada_target 1.5 is not a finite number from 0 to 1"),
    ("train", "seed", 0.5, "train.seed 0.5 is not an integer from 0 to 4294967295"),
    ("train", "device", "gpu", "train.device 'gpu' is not a device: auto, cpu, cuda, cuda:N or mps"),
    ("train", "r1_gamma", -2, "train.r1_gamma -2 is not a finite number >= 0"),
    ("train", "batch", 0, "train.batch 0 is not an integer from 1 to 65536"),  # empty, not 0, is the family's
    ("curate", "matte", "magic", "curate.matte 'magic' is not one of auto, rembg, grabcut, none"),
    ("curate", "resolution", 100000, "curate.resolution 100000 is not an integer from 8 to 4096"),
    ("curate", "blur_min_var", float("nan"), "curate.blur_min_var nan is not a finite number from 0 to 1000000000"),
    ("manager", "max_attempts", 0, "manager.max_attempts 0 is not an integer from 1 to 1000"),
    ("evaluate", "memorized_quantile", 1, "evaluate.memorized_quantile 1 is not a finite number > 0 and < 1"),
    ("evaluate", "metrics", ["fid", "is"], "evaluate.metrics ['fid', 'is'] is not a list of one or more of "),
    ("ingest", "source", "ftp", "ingest.source 'ftp' is not one of demo, path, hashtag"),
])
def test_a_bad_value_in_params_yaml_is_one_line_naming_key_value_and_bound(tmp_path, section, key, value, says):
    with pytest.raises(ParamsError) as e:
        load(SECTIONS[section], _with(tmp_path, section, **{key: value}))
    assert str(e.value).startswith(says) and "\n" not in str(e.value)


def test_checks_across_settings_and_unknown_keys(tmp_path):
    with pytest.raises(ParamsError, match=r"^train.freeze_d 3 keeps a pretrained discriminator's first layers"):
        load(TrainSettings, PARAMS, freeze_d=3)
    assert load(TrainSettings, PARAMS, freeze_d=3, resume_from="x.pt").freeze_d == 3
    with pytest.raises(ParamsError, match=r"^ingest.source is path: set ingest.input"):
        load(IngestSettings, PARAMS, source="path")
    with pytest.raises(ParamsError, match=r"^curate.blur is not a setting \(known: resolution, batch_size, "):
        load(CurateSettings, _with(tmp_path, "curate", blur=1))
    with pytest.raises(ParamsError, match="has no 'train' section"):
        (tmp_path / "empty.yaml").write_text("curate: {}\n")
        load(TrainSettings, tmp_path / "empty.yaml")
    assert load(EvaluateSettings, tmp_path / "missing.yaml") == EvaluateSettings()  # evaluation settings optional


def test_overrides_keep_the_file_value_when_none_and_copies_are_validated():
    p = load(TrainSettings, PARAMS, kimg=None, seed=7)
    assert (p.kimg, p.seed) == (FILE["train"]["kimg"], 7)
    assert p.updated(seed=None, kimg=12).kimg == 12
    with pytest.raises(ParamsError, match=r"^train.kimg -3 is not"):
        p.updated(kimg=-3)


def test_dvc_exp_run_set_param_reaches_ganflow_train_as_one_line(tmp_path, capsys):
    """`dvc exp run -S train.kimg=-1` writes params.yaml, then runs dvc.yaml's `ganflow train` command."""
    from flows.cli import main

    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]
    assert stage["cmd"].startswith("ganflow train ") and "train.kimg" in stage["params"]
    (tmp_path / "data").mkdir()
    rc = main(["train", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
               "--params", str(_with(tmp_path, "train", kimg=-1))])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ganflow train: error: train.kimg -1 is not a finite number from 0 to 1000000"]


# ------------------------------------------------------------------------------------------- the CLI

# Every option `ganflow train` had before its options came from TrainSettings: users' scripts name these.
TRAIN_OPTIONS = ["--arch", "--resolution", "--kimg", "--snapshot-kimg", "--seed", "--resume-from", "--freeze-d",
                 "--preset", "--batch", "--channel-base", "--channel-max", "--r1-gamma", "--gamma", "--loss",
                 "--ada-target", "--fade-kimg", "--stabilize-kimg", "--device", "--data", "--run-dir", "--params",
                 "--restart-on-change", "--xflip"]


def _train_parser():
    from flows.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices["train"]


def test_train_options_come_from_the_settings_and_keep_their_names():
    actions = {a.dest: a for a in reversed(_train_parser()._actions)}  # --xflip, not --no-xflip (same dest)
    flags = {s for a in _train_parser()._actions for s in a.option_strings}  # --no-xflip shares --xflip's dest
    assert set(TRAIN_OPTIONS) <= flags
    for name, field in TrainSettings.model_fields.items():
        if name in TRAIN_FLOW_ONLY:
            continue
        action = actions[name]
        assert "--" + name.replace("_", "-") in action.option_strings and action.default is None
        assert action.help.startswith(field.description)
    assert actions["r1_gamma"].option_strings == ["--r1-gamma", "--gamma"]
    assert actions["arch"].choices == ["stylegan2", "stylegan3-t", "stylegan3-r", "pggan"]


@pytest.mark.parametrize("argv,says", [
    (["--fade-kimg", "-1"], "argument --fade-kimg: '-1' is not a finite number from 0 to 1000000"),
    (["--cycles", "0"], "argument --cycles: '0' is not an integer from 1 to 10000"),
    (["--gamma", "x"], "argument --r1-gamma/--gamma: 'x' is not a finite number >= 0"),
    (["--net", "[1, 2]"], "argument --net: '[1, 2]' is not a mapping"),
])
def test_a_bad_option_is_one_line_with_exit_2(tmp_path, capsys, argv, says):
    from flows.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and says in err[0], err


def test_options_given_reach_the_settings(tmp_path):
    from flows.cli.options import given_settings

    args = _train_parser().parse_args(["--data", "d", "--run-dir", str(tmp_path / "r"), "--gamma", "0.5",
                                       "--net", "{z_dim: 32}", "--cycles", "2", "--fade-kimg", "0"])
    given = given_settings(args, TrainSettings)
    assert given == {"r1_gamma": 0.5, "net": {"z_dim": 32}, "cycles": 2, "fade_kimg": 0.0}
    p = load(TrainSettings, PARAMS, **given)
    assert (p.r1_gamma, p.net, p.cycles, p.fade_kimg, p.kimg) == (0.5, {"z_dim": 32}, 2, 0.0, FILE["train"]["kimg"])


def test_xflip_is_one_training_setting(tmp_path):
    """--xflip was an option of plain `ganflow train` only: no params.yaml key, no UI field, refused with --flow.
    It is a setting like the others, and `--xflip` alone still means true."""
    from flows.cli import build_parser
    from flows.cli.options import given_settings
    from flows.cli import route_train_verbs
    from tasks.common.settings import TrainOverrides
    from tasks.training.stages import train_config

    assert FILE["train"]["xflip"] is False and "xflip" in TrainOverrides.model_fields
    base = ["--data", "d", "--run-dir", str(tmp_path / "r")]
    for argv, given in ((["--xflip"], {"xflip": True}), (["--xflip", "false"], {"xflip": False}),
                        (["--xflip", "--seed", "3"], {"xflip": True, "seed": 3}), ([], {})):
        assert given_settings(_train_parser().parse_args([*base, *argv]), TrainSettings) == given, argv
    submit = build_parser().parse_args(route_train_verbs(["train", "submit", "--data", str(tmp_path), "--run-dir",
                                                          "r", "--kimg", "1", "--xflip"]))
    assert submit.xflip is True
    assert train_config(load(TrainSettings, PARAMS, xflip=True), "stylegan2", 32).xflip is True
    assert train_config(load(TrainSettings, PARAMS), "stylegan2", 32).xflip is False


def test_ganflow_train_xflip_reaches_the_trainer(tmp_path, one_torch_thread):
    """The switch as users type it, through the settings into the run's checkpoint."""
    from flows.cli import main
    from models.checkpoint import latest_checkpoint
    from tests.conftest import write_curated

    data = write_curated(tmp_path / "data", n=4, side=16)
    rc = main(["train", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--params", str(PARAMS),
               "--arch", "stylegan2", "--resolution", "16", "--kimg", "0.004", "--snapshot-kimg", "0.004",
               "--batch", "4", "--channel-base", "64", "--channel-max", "16", "--net", "{z_dim: 8, w_dim: 8}",
               "--device", "cpu", "--xflip"])
    assert rc == 0
    assert latest_checkpoint(tmp_path / "run")[1]["config"]["xflip"] is True


# ------------------------------------------------------------------------------------------- the flow (UI)

def test_a_bad_setting_from_the_ui_is_refused_by_the_flows_parameter_validation():
    from prefect.exceptions import ParameterTypeError

    from flows.train import train_flow

    ok = train_flow.validate_parameters({"data": "d", "run_dir": "r", "settings": {"kimg": 2, "arch": "pggan"}})
    assert (ok["settings"].kimg, ok["settings"].arch, ok["settings"].seed) == (2, "pggan", None)
    for bad, key in (({"kimg": -1}, "kimg"), ({"resolution": 48}, "resolution"), ({"arch": "gan"}, "arch"),
                     ({"bogus": 1}, "bogus")):
        with pytest.raises(ParameterTypeError, match=key):
            train_flow.validate_parameters({"data": "d", "run_dir": "r", "settings": bad})


# ------------------------------------------------------------------------------------------- curate, evaluate

def _parser(command: str):
    from flows.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command]


@pytest.mark.parametrize("command,model,by_hand", [("curate", "CurateSettings", set()),
                                                    ("evaluate", "EvaluateSettings", set())])
def test_curate_and_evaluate_options_come_from_their_sections(command, model, by_hand):
    import tasks.common.settings

    fields = getattr(tasks.common.settings, model).model_fields
    actions = {a.dest: a for a in reversed(_parser(command)._actions)}  # --kid's, not --no-kid's (same dest)
    for name, field in fields.items():
        if name in by_hand:
            continue
        action = actions[name]
        assert "--" + name.replace("_", "-") in action.option_strings and action.default is None, name
        assert action.help.startswith(field.description), name
    if command == "curate":  # the names users know stay
        assert actions["dask_address"].option_strings == ["--dask-address", "--dask"]
        assert actions["matte"].choices == ["auto", "rembg", "grabcut", "none"]


def test_curate_and_evaluate_options_given_reach_the_settings(tmp_path):
    from flows.cli.options import given_settings
    from tasks.common.settings import CurateSettings, EvaluateSettings

    args = _parser("curate").parse_args(["--demo", "--out", "o", "--dask", "tcp://h:8786", "--workers", "2",
                                         "--resolution", "64", "--matte", "none", "--blur-min-var", "10"])
    given = given_settings(args, CurateSettings)
    assert given == {"dask_address": "tcp://h:8786", "workers": 2, "resolution": 64, "matte": "none",
                     "blur_min_var": 10.0}
    assert load(CurateSettings, PARAMS, **given).shard_size == FILE["curate"]["shard_size"]
    args = _parser("evaluate").parse_args(["--run-dir", str(tmp_path / "r"), "--data", str(tmp_path),
                                           "--kid", "false", "--n-fake", "8", "--inception-weights", "w.pth"])
    assert given_settings(args, EvaluateSettings) == {"kid": False, "n_fake": 8, "inception_weights": "w.pth"}


def test_a_bad_curate_or_evaluate_setting_from_the_ui_is_refused():
    from prefect.exceptions import ParameterTypeError

    from flows.curate import curate
    from flows.evaluate import evaluate_flow

    ok = curate.validate_parameters({"settings": {"resolution": 64, "dask_address": "tcp://h:1"}})
    assert (ok["settings"].resolution, ok["settings"].dask_address, ok["settings"].matte) == (64, "tcp://h:1", None)
    for bad, key in (({"resolution": 4}, "resolution"), ({"matte": "blur"}, "matte"), ({"bogus": 1}, "bogus")):
        with pytest.raises(ParameterTypeError, match=key):
            curate.validate_parameters({"settings": bad})
    with pytest.raises(ParameterTypeError, match="n_fake"):
        evaluate_flow.validate_parameters({"run_dir": "r", "data": "d", "settings": {"n_fake": 1}})


# ------------------------------------------------------------------------------------------- metric names

def test_importing_and_loading_the_settings_imports_no_torch():
    """The CLI builds its parsers and checks settings before any command imports torch: tasks.common.settings (and the
    evaluation registry it asks for metric names) must not pull it in, not even when evaluate.metrics is checked."""
    import subprocess
    import sys

    code = ("import sys; import tasks.common.settings as s; "
            "p = s.load(s.EvaluateSettings, 'params.yaml', metrics=['fid', 'fd_dinov2']); "
            "s.load(s.TrainSettings, 'params.yaml'); "
            "print(p.metrics, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split("\n")[0] == "('fid', 'fd_dinov2') False", out


def test_evaluate_metrics_are_the_registrys_fréchet_distances():
    """evaluate.metrics names the registered metrics with a feature space of their own (tasks.evaluation.registry):
    one registered there is accepted here, with no list to keep in step."""
    from tasks.evaluation import registry
    from tasks.evaluation.metrics import METRICS

    assert registry.selectable() == METRICS == ("fid", "fd_dinov2")
    with pytest.raises(ParamsError, match=r"^evaluate.metrics \('kid',\) is not a list of one or more of fid, "
                                          r"fd_dinov2$"):
        load(EvaluateSettings, PARAMS, metrics=("kid",))  # registered, but computed in the spaces the others bring
    registry.register("fd_toy", "dinov2", (registry.Column("fd_toy"),), order=99)(lambda s, space: {})
    try:
        assert load(EvaluateSettings, PARAMS, metrics=("fid", "fd_toy")).metrics == ("fid", "fd_toy")
    finally:
        registry.unregister("fd_toy")
    with pytest.raises(ParamsError, match="fd_toy"):
        load(EvaluateSettings, PARAMS, metrics=("fd_toy",))
