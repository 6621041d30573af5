"""Read a weights file once: its bytes are hashed and unpickled from memory with torch.load(weights_only=True),
so the file that was checked is the file that is loaded (no second open of the path, no full pickle load).
Inception's (tasks.evaluation.metrics) and DINOv2's (tasks.evaluation.dinov2) extractors both load their weights this way,
and both find the file the same way (resolve_path: the CLI option, else an environment variable, else params.yaml).
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

import torch

# In place of a path: a seeded random-initialized network, for offline demos and smoke runs of the pipeline. Its
# scores rank snapshots of one run but are NOT comparable to published ones.
RANDOM = "random"


class WeightsFileError(FileNotFoundError):
    """A weights file that is missing, has the wrong sha256 or is not a plain state dict (name → tensor)."""


def read_bytes(path: str | Path, sha256: str | None = None, what: str = "weights",
               error: type[Exception] = WeightsFileError) -> tuple[bytes, str]:
    """(bytes, sha256) of a regular file, read once; another hash than `sha256` (when given) is refused."""
    path = Path(path)
    try:
        # O_NONBLOCK: a FIFO named like the weights cannot hang the open; fstat checks what is read.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise error(f"{path} is not a regular file")
            os.set_blocking(fd, True)
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read()
        finally:
            os.close(fd)
    except OSError as e:
        raise error(f"{path}: cannot read the {what} file ({e.strerror or type(e).__name__})") from None
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.lower():
        raise error(f"{path}: sha256 {digest} is not the expected {sha256}; refusing to load it")
    return data, digest


def state_from_bytes(data: bytes, path: str | Path, what: str = "weights",
                     error: type[Exception] = WeightsFileError) -> dict[str, torch.Tensor]:
    """The state dict in `data`, loaded with weights_only=True (the safe unpickler refuses anything but tensors and
    plain containers); anything but a non-empty dict of tensors is refused."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise error(f"{path} is not a plain tensor state dict (torch.load(weights_only=True) refused it: "
                    f"{type(e).__name__}); refusing to unpickle it") from None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise error(f"{path} does not hold a {what} state dict (name → tensor)")
    return state


def read_state_dict(path: str | Path, sha256: str | None = None, what: str = "weights",
                    error: type[Exception] = WeightsFileError) -> tuple[dict, str]:
    """(state dict, sha256 of the bytes) of `path`: read_bytes, then state_from_bytes on those same bytes."""
    data, digest = read_bytes(path, sha256, what, error)
    return state_from_bytes(data, path, what, error), digest


def resolve_path(cli: str | None, configured: str | None, *, option: str, env: str, key: str, random_path: Path,
                 write_random: Callable[[Path], Path], missing: Callable[[str], Exception]) -> Path | None:
    """The weights file named by the CLI `option`, else by $`env`, else by params.yaml's `key`; None when none is set.
    RANDOM gives random_path, written by write_random the first time; a path that is not a file raises
    missing("<where> names <path>, which does not exist")."""
    for source, value in ((option, cli), (f"${env}", os.environ.get(env)), (f"params.yaml {key}", configured)):
        if value == RANDOM:
            return random_path if random_path.is_file() else write_random(random_path)
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise missing(f"{source} names {path}, which does not exist")
            return path
    return None
