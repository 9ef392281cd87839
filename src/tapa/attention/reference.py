"""Reference TAPA: the full score matrix, materialised. The test oracle.

Memory is O(Lq * Lk) per head; use :mod:`tapa.attention.chunked` for long inputs.
"""

from __future__ import annotations

import torch

from tapa.attention.phase import TWO_PI, Parts, quadratic_parts
from tapa.attention.validation import check_alpha, check_qkv
from tapa.errors import ShapeError


def default_positions(length: int, offset: int, device: torch.device) -> torch.Tensor:
    return torch.arange(offset, offset + length, device=device)


def _as_positions(pos: torch.Tensor | None, length: int, name: str, device: torch.device) -> torch.Tensor:
    if pos is None:
        return default_positions(length, 0, device)
    pos = torch.as_tensor(pos, device=device)
    if pos.dim() not in (1, 2) or pos.shape[-1] != length:
        raise ShapeError(f"{name}: expected shape ({length},) or (batch, {length}), got {tuple(pos.shape)}")
    return pos


def distance_phase(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    alpha: float,
    dtype: torch.dtype = torch.float32,
    scale: float = TWO_PI,
    pairwise: bool = False,
) -> torch.Tensor:
    """scale |m - n|^alpha (scale = 2 pi: Eq. 12) from exact integer distances; shape (Lq, Lk),
    or (B, Lq, Lk) for batched positions; ``pairwise``: for the pairs (q_pos[i], k_pos[i]), shape (P,)."""
    if pairwise:
        dist = (q_pos.long() - k_pos.long()).abs()
    else:
        dist = (q_pos.unsqueeze(-1).long() - k_pos.unsqueeze(-2).long()).abs()
    return scale * dist.to(dtype).pow(alpha)


def expand_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, H_kv, ...) -> (B, n_heads, ...): each key/value head repeated for its query group."""
    return x.repeat_interleave(n_heads // x.shape[1], dim=1) if x.shape[1] != n_heads else x


def parts_scores(parts: Parts, q_pos: torch.Tensor, k_pos: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pre-softmax TAPA logits (B, H, Lq, Lk) in float32 from pre-scaled parts."""
    h = parts.qa.shape[1]
    dtype = parts.qa.dtype  # key parts may be views of half-precision keys
    amp = parts.qa @ expand_heads(parts.ka.to(dtype), h).transpose(-1, -2)
    prod = parts.qp @ expand_heads(parts.kp.to(dtype), h).transpose(-1, -2)
    scale = distance_phase(q_pos, k_pos, alpha, dtype=prod.dtype)
    if scale.dim() == 3:
        scale = scale.unsqueeze(1)
    return amp * torch.cos(scale * prod)


def tapa_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    alpha: float = 0.1,
    theta: float = 0.5,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
    phase_scale: float = TWO_PI,
) -> torch.Tensor:
    """The pre-softmax logits of Eq. 12, shape (B, H, Lq, Lk), computed in float32.

    ``score(m, n) = (q_A.k_A / sqrt(theta D)) * cos(s |m-n|^alpha (q_P.k_P) / sqrt((1-theta) D))``
    with the phase scale s = ``phase_scale`` (2 pi in the paper).
    q: (B, H, Lq, D); k: (B, H_kv, Lk, D) with H_kv dividing H. Positions default to arange;
    give a (L,) or (B, L) integer tensor to place tokens elsewhere.
    """
    check_qkv(q, k)
    alpha = check_alpha(alpha)
    q_pos = _as_positions(q_positions, q.shape[2], "q_positions", q.device)
    k_pos = _as_positions(k_positions, k.shape[2], "k_positions", q.device)
    return parts_scores(quadratic_parts(q, k, theta, phase_scale), q_pos, k_pos, alpha)


def causal_mask(q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """True where a key lies in the query's future (to be masked)."""
    return k_pos.unsqueeze(-2) > q_pos.unsqueeze(-1)


def reference_attention(
    parts: Parts,
    v: torch.Tensor,
    *,
    alpha: float,
    causal: bool,
    q_offset: int = 0,
    k_offset: int = 0,
) -> torch.Tensor:
    """softmax(scores) @ v with the full score matrix, in the parts' dtype: (B, H, Lq, Dv)."""
    lq, lk = parts.qa.shape[2], parts.ka.shape[2]
    device = parts.qa.device
    q_pos = default_positions(lq, q_offset, device)
    k_pos = default_positions(lk, k_offset, device)
    scores = parts_scores(parts, q_pos, k_pos, alpha)
    if causal:
        future = causal_mask(q_pos, k_pos)
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        # rows with no visible key attend to nothing; a NaN anywhere else propagates
        blind = future.all(-1, keepdim=True)
        if bool(blind.any()):
            probs = probs.masked_fill(blind, 0.0)
    else:
        probs = torch.softmax(scores, dim=-1)
    return probs @ expand_heads(v.to(probs.dtype), parts.qa.shape[1])
