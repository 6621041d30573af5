"""Command-line options generated from a settings model (tasks/common/settings.py): one option per setting.

The flag is the key in kebab case (`snapshot_kimg` → `--snapshot-kimg`), the help is the field's description
with its bound and default, and the value is checked against the field's type and bounds while argparse parses,
so a bad one is argparse's one-line error naming the option, the value and the bound
(`argument --kimg: '-1' is not a finite number >= 0`).
An option not given is None: the settings file's value stays (a `required` one must be given), unless the command
names its own default (`ganflow fid` computes KID only when asked). A list setting is a comma list
(`--metrics fid,fd_dinov2`); a true/false one is a switch that also takes a value (`--kid`, `--kid false`, `--no-kid`),
or a plain switch pair (`--kid`, `--no-kid`) on a command with positional arguments, which an optional value would eat
(`ganflow fid --kid A B`).
"""
from __future__ import annotations

import argparse
from typing import Annotated, Any, Literal, get_args

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from flows.cli.validate import shown
from tasks.common.settings import DEFAULT_PARAMS, ParamsError, Section, annotation as plain_type, bounded_yaml, rule


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse(model: type[Section], name: str):
    """argparse `type=`: the option's text as the field's value, or ArgumentTypeError with the bound."""
    field = model.model_fields[name]
    annotation: Any = plain_type(field)  # an option given is a value: None is its absence
    typ: Any = Annotated[(annotation, *field.metadata)] if field.metadata else annotation
    adapter: TypeAdapter[Any] = TypeAdapter(typ, config=ConfigDict(allow_inf_nan=False))  # nan, inf: refused
    mapping = annotation is dict or getattr(annotation, "__origin__", None) is dict

    def parse(text: str):
        try:
            # a mapping is written as YAML: {z_dim: 32}; bounded like a params file's
            value: Any = bounded_yaml(text, flag(name)) if mapping else text
            if _is_list(field):
                value = [item.strip() for item in text.split(",") if item.strip()]
            return adapter.validate_python(value)
        except (ValidationError, ParamsError):
            raise argparse.ArgumentTypeError(f"{shown(text)} is not {rule(field)}") from None

    parse.__name__ = name
    return parse


def add_setting_options(parser: argparse.ArgumentParser, model: type[Section], names: list[str] | None = None,
                        aliases: dict[str, list[str]] | None = None, metavars: dict[str, str] | None = None,
                        required: tuple[str, ...] = (), defaults: dict[str, Any] | None = None,
                        switches: bool = False) -> None:
    """Add `--kebab-key` for each setting in `names` (default: every field of `model`), default None, or the
    command's own default from `defaults` (a value of the field's type; --help shows it). `switches`: true/false
    settings take no value (for a command with positional arguments)."""
    aliases, metavars, defaults = aliases or {}, metavars or {}, defaults or {}
    for name in names or list(model.model_fields):
        field = model.model_fields[name]
        typ = plain_type(field)
        choices = get_args(typ) if getattr(typ, "__origin__", None) is Literal else None
        extra: dict[str, Any] = {"choices": [c for c in choices if c != ""]} if choices else {}
        if name in metavars:
            extra["metavar"] = metavars[name]
        switch = field.annotation is bool and switches
        if switch:
            extra.update(action="store_const", const=True)
        elif field.annotation is bool:
            extra.update(nargs="?", const=True, type=_parse(model, name))  # `--xflip` alone is `--xflip true`
            extra.setdefault("metavar", "BOOL")
        else:
            extra.update(type=_parse(model, name))
        bound = "" if switch else _bound(field)  # a plain switch takes no value to bound
        default = ("required" if name in required else f"default: {_shown(defaults[name])}" if name in defaults
                   else f"default: {model.section}.{name}")
        parser.add_argument(flag(name), *aliases.get(name, []), dest=name, default=defaults.get(name),
                            required=name in required, help=f"{field.description} ({bound}{default})", **extra)
        if field.annotation is bool:
            parser.add_argument("--no-" + flag(name)[2:], dest=name, action="store_const", const=False,
                                help=f"the opposite of {flag(name)}" if switches else f"as {flag(name)} false")


def add_params_option(parser: argparse.ArgumentParser, what: str = "") -> None:
    """`--params FILE`, the settings file every command reads its sections from (what: which of them, said)."""
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), metavar="FILE",
                        help=f"settings file{what} (default: {DEFAULT_PARAMS})")


def _is_list(field: FieldInfo) -> bool:
    return getattr(field.annotation, "__origin__", None) in (tuple, list)


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bound(field: FieldInfo) -> str:
    """The bound --help shows before the default: a range or a named rule (texts, mappings and choices say
    enough by their metavar and choice list)."""
    text = rule(field)
    plain = text in ("a text", "a non-empty text", "a mapping", "valid") or text.startswith("one of ")
    return "" if plain else f"{text}, comma-separated; " if _is_list(field) else f"{text}; "


def given_settings(args: argparse.Namespace, model: type[Section]) -> dict[str, Any]:
    """The settings named on the command line (options not given are None, and left out)."""
    return {k: getattr(args, k) for k in model.model_fields if getattr(args, k, None) is not None}
