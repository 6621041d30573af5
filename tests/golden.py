"""Golden values: digests of outputs that must not change unless a commit means them to (tests/data/golden/).

`check_golden(name, actual)` compares `actual` with tests/data/golden/<name>.json. With GANFLOW_UPDATE_GOLDEN=1
it writes `actual` there instead (tests/data/golden/record.py runs the tests that way); the new file is then
committed with a message that says why the outputs changed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
UPDATE = "GANFLOW_UPDATE_GOLDEN"


def sha256_files(root: Path, rels: list[str]) -> dict[str, str]:
    """sha256 of each file (relative path → hex digest); a folder stands for every file under it."""
    found = {}
    for rel in rels:
        p = root / rel
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                found[f.relative_to(root).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def check_golden(name: str, actual: dict) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(actual, indent=2, sort_keys=True) + "\n"
    if os.environ.get(UPDATE) == "1":
        path.write_text(text)
        return
    assert path.exists(), f"no golden {path.name}: record it with `python tests/data/golden/record.py`"
    expected = json.loads(path.read_text())
    changed = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
    assert not changed, (f"outputs differ from {path.relative_to(GOLDEN.parents[2])} at {changed}: a behaviour change. "
                         f"If intended, rerun tests/data/golden/record.py and explain the change in the commit.")
