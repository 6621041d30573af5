"""params.yaml rendered from the settings models: each setting's default and description are written once, in
tasks/common/settings.py (training defaults the trainer shares, in models/train_config.py), and params.yaml is
their rendering, so it cannot disagree with them. tests/test_settings.py checks the shipped file is the rendering.

    python -m tasks.common.params_yaml > params.yaml     # after changing a setting's default or description
"""
from __future__ import annotations

import sys
from typing import Any

import yaml

from tasks.common.settings import SECTIONS

HEADER = """\
# Every setting's default and description, rendered from tasks/common/settings.py (`python -m tasks.common.params_yaml
# > params.yaml` after changing one there): the Prefect flows, the CLI and dvc.yaml read this file, and a run's own
# values go here (edit a value, or `dvc exp run -S train.kimg=100`). One section per stage; each dvc.yaml stage lists
# only the keys it reads. Empty (null) means "the family's" or "the preset's", as the description says.
"""
COMMENT_COLUMN = 29  # where the descriptions start, as in the hand-written file this replaced


def value_text(value: Any) -> str:
    """A setting's value as one line of YAML (a list in flow style)."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 16)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def render() -> str:
    lines = [HEADER.rstrip("\n")]
    for name, model in SECTIONS.items():
        lines.append("")
        lines.append(f"{name}:")
        defaults = model.model_construct()  # the declared defaults (an ingest source needs no other setting)
        for key, field in model.model_fields.items():
            entry = f"  {key}: {value_text(getattr(defaults, key))}"
            lines.append(f"{entry.ljust(COMMENT_COLUMN - 1)} # {field.description}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
