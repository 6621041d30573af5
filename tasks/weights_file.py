"""Read a weights file once: its bytes are hashed and unpickled from memory with torch.load(weights_only=True),
so the file that was checked is the file that is loaded (no second open of the path, no full pickle load).
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch


class WeightsFileError(FileNotFoundError):
    """A weights file that is missing, has the wrong sha256 or is not a plain state dict (name → tensor)."""


def read_state_dict(path: str | Path, sha256: str | None = None, what: str = "weights",
                    error: type[Exception] = WeightsFileError) -> tuple[dict, str]:
    """(state dict, sha256 of the bytes) of `path`, refusing a hash other than `sha256` (when given) and anything
    torch.load(weights_only=True) refuses or that is not a dict of tensors. `error` is the exception raised."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read the {what} file ({e.strerror})") from None
    digest = hashlib.sha256(data).hexdigest()
    if sha256 and digest != sha256.lower():
        raise error(f"{path}: sha256 {digest} is not the expected {sha256}; refusing to load it")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # the safe unpickler refuses anything but tensors and plain containers
        raise error(f"{path} is not a plain tensor state dict (torch.load(weights_only=True) refused it: "
                    f"{type(e).__name__}); refusing to unpickle it") from None
    del data
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise error(f"{path} does not hold a {what} state dict (name → tensor)")
    return state, digest
