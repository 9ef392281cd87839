"""Applying RoPE: cos/sin tables and the rotation, half-split (default) or interleaved."""

from __future__ import annotations

import torch
from torch import nn

from tapa.positional.rope_frequencies import rope_inv_freq

# rope types whose frequencies depend on the current sequence length
LENGTH_DEPENDENT = ("dynamic", "longrope")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim (Llama / HF layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): pairs of adjacent coordinates."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate x (..., L, D) by angles whose cos/sin tables are (..., L, R); computed in float32
    (float64 for float64 inputs). With R < D (partial RoPE) the first R coordinates rotate
    and the rest pass through unchanged."""
    rotary = cos.shape[-1]
    if rotary < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :rotary], cos, sin, interleaved), x[..., rotary:]), dim=-1)
    xc = x.double() if x.dtype == torch.float64 else x.float()
    rotated = rotate_interleaved(xc) if interleaved else rotate_half(xc)
    return (xc * cos + rotated * sin).to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions, for any registered ``rope_type``.

    ``scaling`` is a Hugging Face style dict, e.g. ``{"rope_type": "yarn", "factor": 8,
    "original_max_position_embeddings": 256}``; ``None`` means plain RoPE.
    """

    def __init__(
        self, head_dim: int, base: float = 10000.0, scaling: dict | None = None, interleaved: bool = False
    ) -> None:
        super().__init__()
        params = dict(scaling or {})
        self.rope_type = str(params.pop("rope_type", "default"))
        self.params = params
        self.head_dim, self.base, self.interleaved = head_dim, base, interleaved
        inv_freq, factor = rope_inv_freq(self.rope_type, head_dim, base, **params)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_factor = factor

    def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
        if self.rope_type in LENGTH_DEPENDENT:
            inv_freq, factor = rope_inv_freq(self.rope_type, self.head_dim, self.base, seq_len=seq_len, **self.params)
            return inv_freq.to(self.inv_freq.device), factor
        return self.inv_freq, self.attention_factor

    def forward(self, positions: torch.Tensor, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (..., L, D) for integer positions (..., L).

        ``seq_len`` is the length the length-dependent variants (dynamic, longrope) scale
        for; it defaults to the largest position + 1.
        """
        if seq_len is None and self.rope_type in LENGTH_DEPENDENT:
            seq_len = int(positions.max().item()) + 1 if positions.numel() else 0
        inv_freq, factor = self.frequencies(seq_len or 0)
        angles = positions.float().unsqueeze(-1) * inv_freq.float()
        emb = angles.repeat_interleave(2, dim=-1) if self.interleaved else torch.cat((angles, angles), dim=-1)
        return emb.cos() * factor, emb.sin() * factor

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rotary(x, cos, sin, self.interleaved)

    def extra_repr(self) -> str:
        return f"rope_type={self.rope_type}, base={self.base:g}, interleaved={self.interleaved}, params={self.params}"
