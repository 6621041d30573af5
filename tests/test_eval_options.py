"""The evaluation options of `ganflow fid`, `ganflow evaluate` and `ganflow serve` are generated from
tasks.common.settings.EvaluateSettings (one declaration of each bound, default and description; --metrics' names from the
evaluation registry); the evaluation after a training stage is a named type; the device rule is written once."""
from __future__ import annotations

import pytest

from flows.cli import build_parser, main
from flows.cli.validate import check_device_available
from flows.cli.options import flag
from tasks.common.settings import EvaluateSettings, ParamsError, load, rule
from tests.conftest import PARAMS
from tests.one_line import refused

FIELDS = EvaluateSettings.model_fields
# The evaluate settings each command takes as options (fid's --cache-dir is its own: no cache unless given).
TAKES = {"fid": {"inception_weights", "metrics", "dinov2_weights", "kid", "kid_subsets", "kid_subset_size"},
         "evaluate": set(FIELDS),
         "serve": {"inception_weights", "dinov2_weights"}}


def _parser(command: str):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sub.choices[command]


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare the words


# ------------------------------------------------------------------------------------------- one declaration

@pytest.mark.parametrize("command", sorted(TAKES))
def test_each_evaluation_option_is_generated_from_its_setting(command):
    """Every option named after an evaluate setting parses with that field's type and bounds and says the field's
    description and bound: none is written by hand beside the model."""
    by_flag = {s: a for a in _parser(command)._actions for s in a.option_strings}
    for name in TAKES[command]:
        action = by_flag[flag(name)]
        switch = FIELDS[name].annotation is bool and action.nargs == 0 and action.const is True  # fid's --kid
        assert action.dest == name and (switch or getattr(action.type, "__name__", None) == name), (command, name)
        assert action.help.startswith(FIELDS[name].description), (command, name, action.help)
    for name in ("kid_subsets", "kid_subset_size", "metrics"):
        if name in TAKES[command]:
            assert rule(FIELDS[name]) in by_flag[flag(name)].help, (command, name)


def test_kid_bounds_are_the_models_and_help_shows_them_not_hand_written_defaults(capsys):
    assert rule(FIELDS["kid_subsets"]) == "an integer from 1 to 100000"
    assert rule(FIELDS["kid_subset_size"]) == "an integer from 2 to 1000000"  # KID's MMD needs 2 images a subset
    for command in ("fid", "evaluate"):
        text = _help(command, capsys)
        assert "KID subsets (torch-fidelity's default) (an integer from 1 to 100000; default: evaluate.kid_subsets)" \
            in text, text
        assert "(an integer from 2 to 1000000; default: evaluate.kid_subset_size)" in text, text
        assert "100)" not in text and "1000)" not in text  # the defaults are params.yaml's, not repeated here


def test_a_kid_subset_of_one_image_is_refused_in_params_yaml_too():
    with pytest.raises(ParamsError, match=r"^evaluate.kid_subset_size 1 is not an integer from 2 to 1000000$"):
        load(EvaluateSettings, PARAMS, kid_subset_size=1)
    with pytest.raises(ParamsError, match=r"^evaluate.kid_subsets 100001 is not an integer from 1 to 100000$"):
        load(EvaluateSettings, PARAMS, kid_subsets=100_001)


@pytest.mark.parametrize("argv,says", [
    (["fid", "a", "b", "--kid-subset-size", "1"], "argument --kid-subset-size: '1' is not an integer from 2 to 1000000"),
    (["fid", "a", "b", "--kid-subsets", "100001"], "argument --kid-subsets: '100001' is not an integer from 1 to 100000"),
    (["evaluate", "--run-dir", "r", "--data", ".", "--kid", "maybe"], "argument --kid: 'maybe' is not true or false"),
    (["fid", "a", "b", "--metrics", "fd_inception"],
     "argument --metrics: 'fd_inception' is not a list of one or more of fid, fd_dinov2"),
    (["evaluate", "--run-dir", "r", "--data", ".", "--kid-subset-size", "1"],
     "argument --kid-subset-size: '1' is not an integer from 2 to 1000000"),
    (["evaluate", "--run-dir", "r", "--data", ".", "--metrics", "fid,kid"],
     "argument --metrics: 'fid,kid' is not a list of one or more of fid, fd_dinov2"),
])
def test_a_bad_value_is_one_line_naming_the_option_the_value_and_the_bound(argv, says, capsys):
    line = refused(argv, capsys)
    assert says in line, line


# ------------------------------------------------------------------------------------------- --metrics, --kid

def test_metrics_names_and_help_come_from_the_registry(capsys):
    """A metric registered with a feature space of its own is a valid --metrics name and shows in --help, with no
    list to keep in step."""
    from tasks.evaluation import registry

    assert "a list of one or more of fid, fd_dinov2, comma-separated; default: evaluate.metrics" in _help("fid", capsys)
    registry.register("fd_toy", "dinov2", (registry.Column("fd_toy"),), order=99)(lambda s, space: {})
    try:
        assert "a list of one or more of fid, fd_dinov2, fd_toy" in _help("fid", capsys)
        for command, base in (("fid", ["a", "b"]), ("evaluate", ["--run-dir", "r", "--data", "."])):
            args = _parser(command).parse_args([*base, "--metrics", " fid, fd_toy "])
            assert args.metrics == ("fid", "fd_toy")
    finally:
        registry.unregister("fd_toy")


@pytest.mark.parametrize("given,kid", [
    ([], None),  # params.yaml's evaluate.kid
    (["--kid"], True),
    (["--kid", "false"], False),
    (["--kid", "true"], True),
    (["--no-kid"], False),
])
def test_evaluate_kid_is_a_switch_that_also_takes_a_value(given, kid):
    assert _parser("evaluate").parse_args(["--run-dir", "r", "--data", ".", *given]).kid is kid


@pytest.mark.parametrize("argv,kid", [
    (["a", "b"], False),  # KID only when asked
    (["a", "b", "--kid"], True),
    (["--kid", "a", "b"], True),  # a value-taking --kid would eat DIR_A here, as scripts write it
    (["--no-kid", "a", "b"], False),
])
def test_fid_kid_is_a_plain_switch_before_or_after_the_folders(argv, kid):
    args = _parser("fid").parse_args(argv)
    assert (args.dir_a, args.dir_b, args.kid) == ("a", "b", kid)


def test_serve_weights_options_reach_the_neighbour_extractor(tmp_path, monkeypatch):
    """--inception-weights goes to the neighbour search of `serve --data` (Inception's features), --dinov2-weights
    when evaluate.metrics has fd_dinov2; an option not given leaves $ENV, then params.yaml, to name the file."""
    import yaml

    from flows.serve_cli import _neighbours

    monkeypatch.delenv("GANFLOW_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("GANFLOW_DINOV2_WEIGHTS", raising=False)
    (tmp_path / "i.pth").write_bytes(b"i")
    (tmp_path / "d.pth").write_bytes(b"d")
    params = yaml.safe_load(PARAMS.read_text())
    argv = ["--run-dir", "r", "--data", str(tmp_path), "--inception-weights", str(tmp_path / "i.pth"),
            "--dinov2-weights", str(tmp_path / "d.pth")]
    for metrics, metric, weights in ((["fid"], "fid", "i.pth"), (["fid", "fd_dinov2"], "fd_dinov2", "d.pth")):
        params["evaluate"]["metrics"] = metrics
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        args = _parser("serve").parse_args([*argv, "--params", str(tmp_path / "params.yaml")])
        settings = _neighbours(args).settings
        assert (settings.metric, settings.weights) == (metric, tmp_path / weights)
    assert _parser("serve").parse_args(["--run-dir", "r"]).inception_weights is None  # then $ENV, then params.yaml


# ------------------------------------------------------------------------------------------- the evaluation after a stage

def test_an_evaluation_outcome_is_a_named_type_and_a_plain_dict_only_at_the_edge():
    from tasks.training.results import EvaluationOutcome, StageResult, TrainedStage

    summary = {"kimg": 0.008, "fid": 123.4, "kid": None, "best": None, "evaluated": [0.008], "skipped": {}}
    shapes = [(EvaluationOutcome.evaluated(summary), summary),
              (EvaluationOutcome.skipped("no weights"), {"skipped": "no weights"}),
              (EvaluationOutcome.failed("ValueError: bad"), {"failed": "ValueError: bad"})]
    result = StageResult.from_stats(0.008, 0.008, {}, resumed_from=None, transferred_from=None, samples=None,
                                    seconds=0.1)
    for outcome, shape in shapes:
        row = TrainedStage("stage 1/1", result, outcome).to_dict()
        assert row["evaluate"] == shape and list(row["evaluate"]) == list(shape)  # same keys, same order
    assert [o.status for o, _ in shapes] == ["evaluated", "skipped", "failed"]
    assert TrainedStage("stage 1/1", result).to_dict()["evaluate"] is None


def test_evaluate_after_stage_says_skipped_or_failed_as_an_outcome(tmp_path, prefect_api, monkeypatch):
    import yaml
    from prefect import flow

    from flows.evaluate import evaluate_after_stage
    from tasks.training.results import EvaluationOutcome

    monkeypatch.delenv("GANFLOW_INCEPTION_WEIGHTS", raising=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"cache_dir": str(tmp_path / "cache")}}))

    @flow(name="after-a-stage")
    def after_a_stage(params: str) -> EvaluationOutcome:
        return evaluate_after_stage(str(tmp_path / "run"), str(tmp_path / "no-data"), params, "cpu")

    skipped = after_a_stage(str(params))
    assert isinstance(skipped, EvaluationOutcome) and skipped.status == "skipped"
    assert "weights-inception-2015-12-05-6726825d.pth" in skipped.reason
    assert skipped.to_dict() == {"skipped": skipped.reason}

    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not a state dict")  # found, so the evaluation runs, and fails: no run, no data
    params.write_text(yaml.safe_dump({"evaluate": {"cache_dir": str(tmp_path / "cache"),
                                                   "inception_weights": str(weights)}}))
    failed = after_a_stage(str(params))
    assert isinstance(failed, EvaluationOutcome) and failed.status == "failed" and failed.reason
    assert failed.to_dict() == {"failed": failed.reason} and "\n" not in failed.reason


# ------------------------------------------------------------------------------------------- the device rule

@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cudax", ""])
def test_the_train_device_check_uses_the_settings_rule(name):
    from tasks.common.settings import DEVICE

    with pytest.raises(ValueError, match=r"^--device .* is not a device: auto, cpu, cuda, cuda:N or mps$"):
        check_device_available(name, "--device")
    assert not DEVICE.check(name)
    check_device_available("cpu", "--device")  # this machine has one


def test_torch_device_is_the_settings_rule_without_auto():
    import argparse

    from flows.cli.validate import torch_device

    assert torch_device("cuda:1") == "cuda:1" and torch_device("cpu") == "cpu"  # syntax only
    for bad in ("auto", "gpu", "cuda:x"):
        with pytest.raises(argparse.ArgumentTypeError, match="is not a device: cpu, cuda, cuda:N or mps"):
            torch_device(bad)
