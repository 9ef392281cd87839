"""Multi-head (grouped-query) self-attention with a pluggable positional scheme."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tapa.attention import TapaPhase, tapa_attention_parts
from tapa.attention.reference import distance_phase, expand_heads, parts_scores
from tapa.errors import ShapeError
from tapa.model.cache import KVCache
from tapa.model.config import ModelConfig
from tapa.positional import alibi_bias, alibi_slopes, apply_rotary

RopeTables = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # positions -> (cos, sin)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.config, self.layer = config, layer
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.kv_heads, config.head_size
        d = config.d_model
        qkv_bias = config.attention_bias or config.qkv_bias
        self.wq = nn.Linear(d, self.n_heads * self.head_dim, bias=qkv_bias)
        self.wk = nn.Linear(d, self.n_kv * self.head_dim, bias=qkv_bias)
        self.wv = nn.Linear(d, self.n_kv * self.head_dim, bias=qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, d, bias=config.attention_bias)
        self.positional = config.positional
        if self.positional == "tapa":
            self.phase = TapaPhase(
                self.n_heads, self.head_dim, config.tapa_theta, config.tapa_phase, config.tapa_phase_scale
            )
        elif self.positional == "alibi":
            self.register_buffer("slopes", alibi_slopes(self.n_heads), persistent=False)

    def _heads(self, x: torch.Tensor, proj: nn.Linear, n: int) -> torch.Tensor:
        b, length, _ = x.shape
        return proj(x).view(b, length, n, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        start_pos: int,
        cache: KVCache | None = None,
        rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``rope_tables``: (cos, sin) for this step's positions, computed once per forward by the model."""
        b, length, _ = x.shape
        q = self._heads(x, self.wq, self.n_heads)
        k = self._heads(x, self.wk, self.n_kv)
        v = self._heads(x, self.wv, self.n_kv)
        positions = torch.arange(start_pos, start_pos + length, device=x.device)
        if self.positional == "rope":
            if rope_tables is None:
                raise ShapeError("rope_tables: a RoPE layer needs the (cos, sin) tables of its positions")
            cos, sin = rope_tables
            interleaved = self.config.rope_interleaved
            q, k = apply_rotary(q, cos, sin, interleaved), apply_rotary(k, cos, sin, interleaved)
        k_start = start_pos
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
            k_start = cache.start if cache.start is not None else start_pos
        if self.positional == "tapa":
            out = tapa_attention_parts(
                self.phase(q, k),
                v,
                alpha=self.config.tapa_alpha,
                causal=True,
                q_offset=start_pos,
                k_offset=k_start,
                impl=self.config.attn_impl,
            ).to(x.dtype)
        else:
            out = self._sdpa(q, k, v, positions, k_start)
        return self.wo(out.transpose(1, 2).reshape(b, length, -1))

    def _positioned(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, rope: RopeTables | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE applied at the given positions (other schemes: unchanged); keys expanded to the query heads."""
        if self.positional == "rope":
            if rope is None:
                raise ShapeError("rope: a RoPE layer's scores need the model's rope tables (model.rope)")
            interleaved = self.config.rope_interleaved
            q = apply_rotary(q, *rope(q_pos), interleaved)
            k = apply_rotary(k, *rope(k_pos), interleaved)
        return q, expand_heads(k, self.n_heads)

    def score_matrix(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, rope: RopeTables | None = None
    ) -> torch.Tensor:
        """Pre-softmax scores (B, H, Lq, Lk) of projected queries q (B, H, Lq, D) at ``q_pos``
        against keys k (B, H_kv, Lk, D) at ``k_pos`` (before any rotation), no mask:

        - RoPE: ``<R_m q, R_n k> / sqrt(D)`` (``rope`` = the model's ``rope``, scaling included);
        - NoPE: ``<q, k> / sqrt(D)``; ALiBi: that minus ``slope_h |m - n|``;
        - TAPA: ``<q_A, k_A> / sqrt(theta D) * cos(s |m-n|^alpha <q_P, k_P> / sqrt((1-theta) D))``
          (Eq. 12 or the layer's phase variant, through its TapaPhase parts).

        The forward pass computes the same scores with faster kernels; this is the one
        readable statement of each scheme, used by the theory and diagnostics tools."""
        q, k = self._positioned(q, k, q_pos, k_pos, rope)
        if self.positional == "tapa":
            return parts_scores(self.phase(q, k), q_pos, k_pos, self.config.tapa_alpha)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if self.positional == "alibi":
            scores = scores + alibi_bias(self.slopes, q_pos, k_pos).to(scores.dtype)
        return scores

    def score_pairs(
        self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, rope: RopeTables | None = None
    ) -> torch.Tensor:
        """:meth:`score_matrix`'s scores for P pairs only, without the (Lq, Lk) matrix: q (B, H, P, D)
        holds the queries at positions ``q_pos`` (P,), k (B, H_kv, P, D) the keys at ``k_pos`` (P,);
        the result is (B, H, P)."""
        q, k = self._positioned(q, k, q_pos, k_pos, rope)
        if self.positional == "tapa":
            parts = self.phase(q, k)
            amp = (parts.qa * parts.ka.to(parts.qa.dtype)).sum(-1)
            prod = (parts.qp * parts.kp.to(parts.qp.dtype)).sum(-1)
            phase = distance_phase(q_pos, k_pos, self.config.tapa_alpha, prod.dtype, pairwise=True)
            return amp * torch.cos(phase * prod)
        scores = (q * k).sum(-1) / math.sqrt(q.shape[-1])
        if self.positional == "alibi":
            scores = scores + alibi_bias(self.slopes, q_pos, k_pos, pairwise=True).to(scores.dtype)
        return scores

    def _sdpa(self, q, k, v, q_pos, k_start) -> torch.Tensor:
        lq, lk = q.shape[2], k.shape[2]
        gqa = self.n_heads != self.n_kv
        if self.positional != "alibi" and lq == lk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        k_pos = torch.arange(k_start, k_start + lk, device=q.device)
        future = k_pos[None, :] > q_pos[:, None]
        if self.positional == "alibi":
            bias = alibi_bias(self.slopes, q_pos, k_pos).masked_fill(future, float("-inf")).to(q.dtype)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=~future, enable_gqa=gqa)
