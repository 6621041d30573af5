"""What the Prefect UI's settings forms say and what the server refuses at submit.

A flow's `settings` parameter is a model made from a settings section (tasks.common.settings.overrides_model), and
Prefect registers its JSON schema with the deployment (`prefect deploy`). Two things are added to that schema here,
when it is made:

- each setting's description names the value an empty field takes: params.yaml's, read through the settings
  loader when the deployment is registered ("empty: params.yaml's train.kimg, 0 when registered");
- the rules across settings that a JSON schema can state (Draft 2020-12, which the server checks before it
  creates a run of a deployment with enforce_parameter_schema, Prefect's default): the train form's resolution is
  a power of two, its preset and net keys are those of the family named (of any family when none is), freeze_d
  needs resume_from, and kimg must be given (an empty kimg would mean params.yaml's plan length, thousands of
  kimg, a CPU run that never ends). A rule that needs params.yaml's values (a preset of the file's arch) is
  left to the run, which checks every setting when it starts (settings.load).
"""
from __future__ import annotations

from typing import Any

from tasks.common.settings import ARCHS, DEFAULT_PARAMS, ParamsError, Section, load

# The train form's settings an empty field must not leave to params.yaml (kimg: see the module docstring).
REQUIRED = {"train": ("kimg",)}


def complete_form(schema: dict[str, Any], model: type[Section]) -> None:
    """Add params.yaml's values to the descriptions of `schema` (an overrides model's JSON schema, changed in place)
    and the section's rules (train: train_rules)."""
    try:
        current = load(model, DEFAULT_PARAMS, missing_ok=True).model_dump()
    except (OSError, ParamsError):  # no readable params.yaml where the schema is made: the plain descriptions
        current = {}
    for name, prop in schema.get("properties", {}).items():
        if name in current:
            prop["description"] = (f"{prop.get('description', '')} (empty: params.yaml's {model.section}.{name}, "
                                   f"{_shown(current[name])} when registered)")
    required = REQUIRED.get(model.section, ())
    for name in required:  # no empty value: the field's own type, without its null
        prop = schema["properties"][name]
        schema["properties"][name] = {**_typed(prop), "title": prop.get("title", name),
                                      "description": prop["description"].split(" (empty: ")[0] + " (required here)"}
    if required:
        schema["required"] = [*schema.get("required", []), *required]
    if model.section == "train":
        train_rules(schema)


def _shown(value: Any) -> str:
    return repr(value) if value == "" or isinstance(value, dict) else str(value)


def _typed(prop: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of an optional field's schema (anyOf [typed, null])."""
    return next(b for b in prop.get("anyOf", [prop]) if b.get("type") != "null")


def train_rules(schema: dict[str, Any]) -> None:
    """TrainSettings' checks across fields, as JSON schema (the settings model's validators say the same in words)."""
    from models.arch import family

    props = schema["properties"]
    res = _typed(props["resolution"])
    res["enum"] = [2 ** i for i in range(2, 16) if res["minimum"] <= 2 ** i <= res["maximum"]]
    presets = {a: list(family(a).presets()) for a in ARCHS}
    keys = {a: list(family(a).net_keys()) for a in ARCHS}
    _typed(props["preset"])["enum"] = list(dict.fromkeys(p for a in ARCHS for p in presets[a]))
    _typed(props["net"])["propertyNames"] = {"enum": list(dict.fromkeys(k for a in ARCHS for k in keys[a]))}
    rules: list[dict[str, Any]] = [
        {"if": {"required": ["freeze_d"], "properties": {"freeze_d": {"type": "integer", "minimum": 1}}},
         "then": {"required": ["resume_from"], "properties": {"resume_from": {"type": "string", "minLength": 1}}}}]
    for a in ARCHS:  # a family named (and no network file, whose family is the run's): its own presets and keys
        rules.append({
            "if": {"required": ["arch"], "properties": {"arch": {"const": a}},
                   "not": {"required": ["resume_from"], "properties": {"resume_from": {"type": "string",
                                                                                       "minLength": 1}}}},
            "then": {"properties": {"preset": {"anyOf": [{"enum": presets[a]}, {"type": "null"}]},
                                    "net": {"anyOf": [{"type": "object", "propertyNames": {"enum": keys[a]}},
                                                      {"type": "null"}]}}}})
    schema["allOf"] = [*schema.get("allOf", []), *rules]
