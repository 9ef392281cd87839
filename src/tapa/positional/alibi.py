"""ALiBi (Press et al. 2022): a per-head linear penalty on distance added to the logits."""

from __future__ import annotations

import math

import torch


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Geometric slopes 2^(-8 i / n) for i = 1..n when n is a power of two; otherwise the
    slopes of the nearest lower power of two followed by every other slope of twice that."""

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_heads & (n_heads - 1) == 0:
        slopes = power_of_two(n_heads)
    else:
        lower = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, pairwise: bool = False) -> torch.Tensor:
    """-slope_h * |m - n|, shape (H, Lq, Lk), float32; ``pairwise``: for the pairs (q_pos[i], k_pos[i]), (H, P)."""
    if pairwise:
        return -slopes.view(-1, 1) * (q_pos - k_pos).abs().float()
    dist = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).abs().float()
    return -slopes.view(-1, 1, 1) * dist
