"""The Prefect UI's run forms, as deployments/prefect.yaml registers them: descriptions render as written,
UI runs do not version or commit unasked, and the train form offers what its errors advise."""
from __future__ import annotations

import importlib
import re
from typing import get_args

import pytest
import yaml

from tests.conftest import ROOT

DEPLOYMENTS = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
# The UI renders descriptions as markdown (HTML allowed): <kimg> or <name>/ would vanish as unknown tags.
ANGLE = re.compile(r"<[^<>\s][^<>]*>")


def _schema(entrypoint: str) -> dict:
    from prefect.utilities.callables import parameter_schema

    module, name = entrypoint.split(":")
    flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), name)
    return parameter_schema(flow).model_dump_for_openapi()


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_parameter_descriptions_have_no_angle_brackets(deployment):
    props = _schema(deployment["entrypoint"])["properties"]
    assert props, deployment["name"]
    for name, prop in props.items():
        description = prop.get("description", "")
        assert description, f"{deployment['name']}.{name} has no description in the form"
        assert not ANGLE.search(description), f"{deployment['name']}.{name}: {description!r}"
    assert not ANGLE.search(deployment.get("description", ""))


def test_train_form_offers_restart_on_change_and_hides_the_managers_request_id():
    train = next(d for d in DEPLOYMENTS if d["name"] == "train")
    props = _schema(train["entrypoint"])["properties"]
    assert "request_id" not in props  # the manager tags its runs request:<id> instead
    assert props["restart_on_change"]["type"] == "boolean" and props["restart_on_change"]["default"] is False
    assert "superseded" in props["restart_on_change"]["description"]


def _assert_settings_form(form: dict, model, names: list[str] | None = None, required: tuple[str, ...] = ()) -> None:
    """A nested settings form made from a settings model: every setting, in order, with its description, its
    bounds and no default: empty keeps params.yaml's value, which the description names (as the settings loader
    reads it); a required one has no empty value."""
    from annotated_types import Ge, Gt, Le, Lt

    from tasks.common.settings import load

    names = list(model.model_fields) if names is None else names
    assert list(form) == names
    current = load(model, ROOT / "params.yaml").model_dump()
    keywords = {Ge: ("minimum", "ge"), Gt: ("exclusiveMinimum", "gt"), Le: ("maximum", "le"), Lt: ("exclusiveMaximum", "lt")}
    for name in names:
        field, prop = model.model_fields[name], form[name]
        assert not ANGLE.search(prop["description"]), name
        if name in required:
            assert prop["description"] == f"{field.description} (required here)" and "default" not in prop, name
            typed = prop
        else:
            value = current[name]
            shown = repr(value) if value == "" or isinstance(value, dict) else str(value)
            assert prop["description"] == (f"{field.description} (empty: params.yaml's {model.section}.{name}, {shown} "
                                           "when registered)") and prop["default"] is None, name
            [typed] = [b for b in prop["anyOf"] if b.get("type") != "null"]
        for bound in field.metadata:
            if type(bound) in keywords:
                key, attr = keywords[type(bound)]
                assert typed[key] == getattr(bound, attr), (name, key)


def _settings_form(schema: dict, parameter: str) -> dict:
    ref = schema["properties"][parameter]["$ref"].split("/")[-1]
    return schema["definitions"][ref]["properties"]


def test_train_form_shows_every_training_setting_with_its_bounds_and_description():
    """The train deployment's form: one nested `settings` form made from TrainSettings, so a UI run can set
    everything the CLI can, within the same bounds; empty fields keep params.yaml's values."""
    from tasks.common.settings import TrainSettings

    train = next(d for d in DEPLOYMENTS if d["name"] == "train")
    form = _settings_form(_schema(train["entrypoint"]), "settings")
    _assert_settings_form(form, TrainSettings, required=("kimg",))
    assert form["kimg"]["minimum"] == 0 and form["snapshot_kimg"]["anyOf"][0]["minimum"] == 0.001
    assert form["resolution"]["anyOf"][0]["maximum"] == 1024
    assert form["loss"]["anyOf"][0]["enum"] == ["logistic", "wgan", "lsgan"]  # empty (null): the family's
    assert train["parameters"]["settings"] == {"resolution": 64, "arch": "stylegan2", "kimg": 20}  # valid for the form
    from tasks.common.settings import TrainOverrides

    TrainOverrides(**train["parameters"]["settings"])


REFUSED = [  # (settings, the field the server names): what TrainSettings refuses, refused before a run exists
    ({"resolution": 64}, "settings"),                                   # kimg empty: params.yaml's 25,000 on a CPU
    ({"resolution": 48, "kimg": 1}, "settings.resolution"),             # not a power of two
    ({"kimg": 1, "preset": "bogus"}, "settings.preset"),                # no family's preset
    ({"kimg": 1, "arch": "stylegan3-t", "preset": "paper256"}, "settings.preset"),  # stylegan2's, not stylegan3's
    ({"kimg": 1, "net": {"bogus": 1}}, "settings.net"),                 # no family's network key
    ({"kimg": 1, "arch": "pggan", "net": {"w_dim": 32}}, "settings.net"),   # stylegan's key, not pggan's
    ({"kimg": 1, "freeze_d": 2}, "settings"),                           # freeze_d without resume_from
]


def test_train_deployment_refuses_at_submit_what_the_settings_refuse(prefect_api, tmp_path):
    """A run of the train deployment with settings the run would refuse 40 s later is refused when it is submitted
    (the UI's Run, `prefect deployment run`, run_deployment), by the server, with the field named: the rules are in
    the parameter schema `prefect deploy` registers (enforce_parameter_schema, Prefect's default). Each bad value
    is also refused by TrainSettings itself, so the form refuses no run the settings would take."""
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.utilities.callables import parameter_schema

    from flows.train import train_flow
    from tasks.common.settings import ParamsError

    with get_client(sync_client=True) as api:
        deployment = api.create_deployment(
            flow_id=api.create_flow(train_flow), name="form-test", entrypoint="flows/train.py:train_flow",
            parameter_openapi_schema=parameter_schema(train_flow).model_dump_for_openapi(),
            enforce_parameter_schema=True)
        base = {"data": "data/curated/demo", "run_dir": str(tmp_path / "run")}
        for settings, field in REFUSED:
            with pytest.raises(PrefectHTTPStatusError, match="409") as refused:
                api.create_flow_run_from_deployment(deployment, parameters={**base, "settings": settings})
            assert f"Validation failed for field {field!r}" in refused.value.response.text, (settings, refused.value)
            if "kimg" in settings:
                with pytest.raises(ParamsError):
                    _settings(settings)
        ok = {"kimg": 1, "arch": "pggan", "preset": "small", "net": {"z_dim": 32}, "resolution": 64}
        assert api.create_flow_run_from_deployment(deployment, parameters={**base, "settings": ok}).parameters[
            "settings"] == ok


def _settings(given: dict):
    from tasks.common.settings import TrainSettings, load

    return load(TrainSettings, ROOT / "params.yaml", **given)


def test_curate_form_shows_every_curation_setting_with_its_bounds_and_description():
    """The curate deployment's form (and the pipeline's curate_settings): one nested form made from
    CurateSettings, in place of the loose resolution/matte/dask_address parameters it had."""
    from tasks.common.settings import MAX_RESOLUTION, CurateSettings

    curate = next(d for d in DEPLOYMENTS if d["name"] == "curate")
    schema = _schema(curate["entrypoint"])
    assert not {"resolution", "matte", "dask_address"} & set(schema["properties"])
    form = _settings_form(schema, "settings")
    _assert_settings_form(form, CurateSettings)
    assert form["resolution"]["anyOf"][0]["minimum"] == 8 and form["resolution"]["anyOf"][0]["maximum"] == MAX_RESOLUTION
    assert form["matte"]["anyOf"][0]["enum"] == ["auto", "rembg", "grabcut", "none"]
    assert form["face_min_fraction"]["anyOf"][0]["maximum"] == 1
    pipeline = next(d for d in DEPLOYMENTS if d["name"] == "pipeline")
    _assert_settings_form(_settings_form(_schema(pipeline["entrypoint"]), "curate_settings"), CurateSettings)


def test_curate_and_pipeline_forms_take_max_posts_from_the_ingest_settings():
    """max_posts is IngestSettings' field in both forms (a nested ingest_settings form, empty = params.yaml's
    ingest.max_posts), with its bound and description; the source choices are the ingest section's."""
    from tasks.common.settings import IngestSettings

    for name in ("curate", "pipeline"):
        deployment = next(d for d in DEPLOYMENTS if d["name"] == name)
        schema = _schema(deployment["entrypoint"])
        assert "max_posts" not in schema["properties"], name
        form = _settings_form(schema, "ingest_settings")
        _assert_settings_form(form, IngestSettings, names=["max_posts"])
        assert form["max_posts"]["anyOf"][0]["minimum"] == 1, name
        source = schema["properties"]["source"]
        assert source["enum"] == ["demo", "path", "hashtag"] == list(get_args(IngestSettings.model_fields["source"].annotation)), name


def test_evaluate_flow_form_shows_every_evaluation_setting():
    """The evaluate flow (a subflow of train, or run from the UI): one settings form made from EvaluateSettings."""
    from tasks.common.settings import EvaluateSettings

    schema = _schema("flows/evaluate.py:evaluate_flow")
    assert not {"n_fake", "inception_weights", "dinov2_weights"} & set(schema["properties"])
    form = _settings_form(schema, "settings")
    _assert_settings_form(form, EvaluateSettings)
    assert form["n_fake"]["anyOf"][0]["minimum"] == 2 and form["memorized_quantile"]["anyOf"][0]["exclusiveMaximum"] == 1


def test_manager_form_shows_every_setting_of_a_pass():
    """The manager deployment's form: the queue, and one settings form made from ManagerSettings without the
    loop's interval (the deployment's schedule is the interval)."""
    from tasks.common.settings import ManagerOverrides, ManagerSettings

    manager = next(d for d in DEPLOYMENTS if d["name"] == "manager")
    schema = _schema(manager["entrypoint"])
    assert set(schema["properties"]) == {"queue", "params", "settings"}
    form = _settings_form(schema, "settings")
    assert list(form) == ["stale_after_seconds", "max_attempts", "max_running", "deployment"]
    _assert_settings_form(form, ManagerSettings, names=list(ManagerOverrides.model_fields))
    assert form["max_attempts"]["anyOf"][0]["minimum"] == 1
    assert form["stale_after_seconds"]["anyOf"][0]["minimum"] == 1


def test_curate_deployment_does_not_version_unless_asked():
    curate = next(d for d in DEPLOYMENTS if d["name"] == "curate")
    assert curate["parameters"].get("version", False) is False
    assert _schema(curate["entrypoint"])["properties"]["version"]["default"] is False
    assert "version" in curate["description"]  # and says how to


def test_train_flow_with_restart_on_change_sets_another_runs_folder_aside(tmp_path, prefect_api, one_torch_thread):
    """The way out the error names: the same flow, seed changed, into a folder of another run."""
    from flows.train import train_flow
    from models.checkpoint import list_checkpoints
    from tests.conftest import write_curated
    from tests.test_train_flow import tiny_params

    data, run_dir = write_curated(tmp_path / "data"), tmp_path / "run"
    args = dict(data=str(data), run_dir=str(run_dir), params=str(tiny_params(tmp_path)))
    run = dict(arch="stylegan2", resolution=32, kimg=0.008, device="cpu")
    assert train_flow(**args, settings={**run, "seed": 0})["kimg"] == 0.008
    refused = train_flow(**args, settings={**run, "seed": 1}, return_state=True)
    assert refused.is_failed() and "restart_on_change in the train deployment's form" in refused.message
    assert train_flow(**args, settings={**run, "seed": 1}, restart_on_change=True)["kimg"] == 0.008
    assert [k for k, _ in list_checkpoints(run_dir / "superseded" / "1")] == [0.008]  # moved, not deleted
    assert [k for k, _ in list_checkpoints(run_dir)] == [0.008]
