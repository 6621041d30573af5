"""Print pyproject.toml's pinned dependencies, one per line: the requirements the Docker image installs
(deployments/Dockerfile), read from the one place they are declared.

    python deployments/requirements.py [pyproject.toml] > requirements.txt
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def pinned(pyproject: Path) -> list[str]:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    loose = [d for d in deps if "==" not in d]
    if loose:
        raise SystemExit(f"{pyproject}: not pinned with ==: {', '.join(loose)} (the image installs exact versions)")
    return deps


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "pyproject.toml")
    print("\n".join(pinned(path)))
