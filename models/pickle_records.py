"""What an NVIDIA network pickle's persistent objects hold, as data (models.network_pickle reads them, and
models.nvidia_arch maps them onto ganflow's networks), and the one error both raise."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class NetworkPickleError(ValueError):
    """The file is not a network pickle ganflow can read (said in one line)."""


@dataclass
class Persistent:
    """What a persistent object's pickle holds, as data: never an instance of the pickled class."""

    class_name: str
    init_args: tuple
    init_kwargs: dict
    parameters: dict[str, torch.Tensor | None]
    buffers: dict[str, torch.Tensor | None]
    non_persistent: set
    modules: dict[str, "Persistent | None"]
    attrs: dict[str, Any] = field(default_factory=dict)  # every other attribute (z_dim, conv_clamp, ...)

    def child(self, name: str) -> "Persistent | None":
        return self.modules.get(name)

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The tensors torch's Module.state_dict would give the original object, in the same order."""
        out = {}
        for k, v in self.parameters.items():
            if v is not None:
                out[prefix + k] = v.detach()
        for k, v in self.buffers.items():
            if v is not None and k not in self.non_persistent:
                out[prefix + k] = v.detach()
        for k, m in self.modules.items():
            if m is not None:
                out.update(m.state_dict(f"{prefix}{k}."))
        return out

    def num_params(self) -> int:
        own = sum(p.numel() for p in self.parameters.values() if p is not None)
        return own + sum(m.num_params() for m in self.modules.values() if m is not None)
