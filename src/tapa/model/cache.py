"""Key/value cache for incremental decoding.

TAPA and ALiBi scores depend on positions only through |m - n|, so the cache holds raw
keys; RoPE caches keys already rotated at their own positions (the usual practice).

Keys and values live in preallocated buffers that grow geometrically (by half their size,
at least 256 positions), and a step writes its new rows in place: appending one token costs
O(1) amortised, where concatenating would copy the whole cache at every step. What
``update`` returns, and what ``keys`` / ``values`` hold, are views of the filled prefix.
"""

from __future__ import annotations

import torch

_MIN_GROWTH = 256


class KVCache:
    """Per-layer key/value tensors (B, H_kv, L, D) plus the position of the first cached token."""

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.start: int | None = None
        self._buffers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    def __len__(self) -> int:
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    @property
    def next_position(self) -> int:
        return (self.start or 0) + len(self)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's keys/values for ``layer`` and return everything cached so far."""
        old_k, old_v = self.keys[layer], self.values[layer]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # differentiable decoding: in-place writes would invalidate views autograd saved
            if old_k is not None and old_v is not None:
                k, v = torch.cat([old_k, k], dim=2), torch.cat([old_v, v], dim=2)
            self.keys[layer], self.values[layer], self._buffers[layer] = k, v, None
            return k, v
        filled = 0 if old_k is None else old_k.shape[2]
        total = filled + k.shape[2]
        buffers = self._buffers[layer]
        if buffers is None or not self._fits(buffers, k, v, total):
            capacity = total + max(_MIN_GROWTH, total // 2)
            buffers = (self._grown(old_k, k, capacity), self._grown(old_v, v, capacity))
            self._buffers[layer] = buffers
        buf_k, buf_v = buffers
        buf_k[:, :, filled:total].copy_(k)
        buf_v[:, :, filled:total].copy_(v)
        self.keys[layer], self.values[layer] = buf_k[:, :, :total], buf_v[:, :, :total]
        return self.keys[layer], self.values[layer]

    @staticmethod
    def _fits(buffers: tuple[torch.Tensor, torch.Tensor], k: torch.Tensor, v: torch.Tensor, total: int) -> bool:
        buf_k, buf_v = buffers
        return all(
            buf.shape[2] >= total
            and buf.shape[:2] == new.shape[:2]
            and buf.shape[3] == new.shape[3]
            and buf.dtype == new.dtype
            and buf.device == new.device
            for buf, new in ((buf_k, k), (buf_v, v))
        )

    @staticmethod
    def _grown(old: torch.Tensor | None, new: torch.Tensor, capacity: int) -> torch.Tensor:
        """A contiguous (B, H, capacity, D) buffer holding ``old`` (if any) in its first rows."""
        b, h, _, d = new.shape
        buf = new.new_empty(b, h, capacity, d)
        if old is not None:
            buf[:, :, : old.shape[2]].copy_(old)
        return buf
