"""Read a weights file once: its bytes are hashed and unpickled from memory with torch.load(weights_only=True),
so the file that was checked is the file that is loaded (no second open of the path, no full pickle load).
Inception's (tasks.evaluation.metrics) and DINOv2's (tasks.evaluation.dinov2) extractors both load their weights this way.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import torch


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
