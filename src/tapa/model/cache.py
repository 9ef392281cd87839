"""Key/value cache for incremental decoding.

TAPA and ALiBi scores depend on positions only through |m - n|, so the cache holds raw
keys; RoPE caches keys already rotated at their own positions (the usual practice).
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value tensors (B, H_kv, L, D) plus the position of the first cached token."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.start: int | None = None

    def __len__(self) -> int:
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    @property
    def next_position(self) -> int:
        return (self.start or 0) + len(self)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values for ``layer`` and return everything cached so far."""
        old_k, old_v = self.keys[layer], self.values[layer]
        if old_k is not None and old_v is not None:
            k, v = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v
