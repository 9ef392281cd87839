"""Memory-efficient TAPA: block-by-block scores with an online softmax.

Forward keeps one (block x block) tile of scores per head at a time and stores only the
output and the row log-sum-exp. Backward recomputes each tile (as flash attention does)
and uses the TAPA chain rule. With s = a * cos(c * p), where a = qa.ka, p = qp.kp and
c = 2 pi |m - n|^alpha:

    ds/da = cos(c p),    ds/dp = -a * c * sin(c p)
    dS = P * (dO.v - rowsum(dO * O))       (softmax backward, P = exp(s - lse))

Memory is O((Lq + Lk) * D + block^2) per head: linear in the sequence length.

Grouped-query attention is handled without copying k and v: the G query heads that
share a key head are stacked as extra rows of one tile.
"""

from __future__ import annotations

import math

import torch

from tapa.attention.phase import Parts, compute_dtype

DEFAULT_BLOCK = 256


class _Tiles:
    """Geometry and cached distance tables shared by the forward and backward passes."""

    def __init__(
        self,
        lq: int,
        lk: int,
        groups: int,
        alpha: float,
        causal: bool,
        q_offset: int,
        k_offset: int,
        block: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.lq, self.lk, self.groups, self.alpha = lq, lk, groups, alpha
        self.causal, self.q_offset, self.k_offset, self.block = causal, q_offset, k_offset, block
        self.device, self.dtype = device, dtype
        self._scale_cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self._mask_cache: dict[tuple[int, int, int], torch.Tensor | None] = {}

    def q_blocks(self) -> list[tuple[int, int]]:
        return [(s, min(s + self.block, self.lq)) for s in range(0, self.lq, self.block)]

    def k_blocks(self, qs: int, qe: int) -> list[tuple[int, int]]:
        """Key blocks that hold at least one key visible to queries qs..qe-1."""
        end = self.lk
        if self.causal:
            last_q_pos = self.q_offset + qe - 1
            end = max(0, min(self.lk, last_q_pos - self.k_offset + 1))
        return [(s, min(s + self.block, end)) for s in range(0, end, self.block)]

    def scale(self, qs: int, qe: int, ks: int, ke: int) -> torch.Tensor:
        """2 pi |m - n|^alpha for the tile, repeated over the G grouped heads: (G*bq, bk)."""
        delta = (self.q_offset + qs) - (self.k_offset + ks)
        key = (delta, qe - qs, ke - ks)
        table = self._scale_cache.get(key)
        if table is None:
            rows = torch.arange(qe - qs, device=self.device) + delta
            cols = torch.arange(ke - ks, device=self.device)
            dist = (rows[:, None] - cols[None, :]).abs().to(self.dtype)
            table = (2 * math.pi) * dist.pow(self.alpha)
            table = table.repeat(self.groups, 1)
            self._scale_cache[key] = table
        return table

    def mask(self, qs: int, qe: int, ks: int, ke: int) -> torch.Tensor | None:
        """True where the key is in the query's future; None when nothing in the tile is masked."""
        if not self.causal:
            return None
        delta = (self.q_offset + qs) - (self.k_offset + ks)
        key = (delta, qe - qs, ke - ks)
        if key not in self._mask_cache:
            if ke - 1 - ks <= delta:  # the last key is visible to the first query
                self._mask_cache[key] = None
            else:
                rows = torch.arange(qe - qs, device=self.device) + delta
                cols = torch.arange(ke - ks, device=self.device)
                self._mask_cache[key] = (cols[None, :] > rows[:, None]).repeat(self.groups, 1)
        return self._mask_cache[key]


def _rows(x: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """(B, Hkv, G, L, d) -> the rows s..e-1 of every group stacked: (B, Hkv, G*(e-s), d)."""
    b, h, g, _, d = x.shape
    return x[:, :, :, s:e].reshape(b, h, g * (e - s), d)


def _tile(qa, ka, qp, kp, tiles: _Tiles, qs, qe, ks, ke):
    """Scores of one tile and the pieces the backward needs."""
    amp = qa @ ka[:, :, ks:ke].transpose(-1, -2)
    scale = tiles.scale(qs, qe, ks, ke)
    phase = (qp @ kp[:, :, ks:ke].transpose(-1, -2)) * scale
    cos = torch.cos(phase)
    scores = amp * cos
    mask = tiles.mask(qs, qe, ks, ke)
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return scores, amp, phase, cos, scale, mask


def _forward(qa, ka, qp, kp, v, tiles: _Tiles):
    """qa, qp: (B, Hkv, G, Lq, d); ka, kp, v: (B, Hkv, Lk, d). Returns out (B,Hkv,G,Lq,Dv), lse."""
    b, hk, g, lq, _ = qa.shape
    dv = v.shape[-1]
    out = qa.new_zeros(b, hk, g, lq, dv)
    lse = qa.new_full((b, hk, g, lq), float("-inf"))
    for qs, qe in tiles.q_blocks():
        qa_r, qp_r = _rows(qa, qs, qe), _rows(qp, qs, qe)
        rows = g * (qe - qs)
        m = qa.new_full((b, hk, rows), float("-inf"))
        denom = qa.new_zeros(b, hk, rows)
        acc = qa.new_zeros(b, hk, rows, dv)
        for ks, ke in tiles.k_blocks(qs, qe):
            scores = _tile(qa_r, ka, qp_r, kp, tiles, qs, qe, ks, ke)[0]
            m_new = torch.maximum(m, scores.amax(-1))
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(scores - m_safe.unsqueeze(-1))
            corr = torch.exp(m - m_safe)
            denom = denom * corr + p.sum(-1)
            acc = acc * corr.unsqueeze(-1) + p @ v[:, :, ks:ke]
            m = m_new
        safe = denom > 0
        o = acc / torch.where(safe, denom, torch.ones_like(denom)).unsqueeze(-1)
        out[:, :, :, qs:qe] = o.view(b, hk, g, qe - qs, dv)
        row_lse = torch.where(safe, m + torch.log(torch.where(safe, denom, torch.ones_like(denom))), m)
        lse[:, :, :, qs:qe] = row_lse.view(b, hk, g, qe - qs)
    return out, lse


def _backward(qa, ka, qp, kp, v, out, lse, d_out, tiles: _Tiles):
    b, hk, g, _lq, _ = qa.shape
    dqa, dqp = torch.zeros_like(qa), torch.zeros_like(qp)
    dka, dkp, dv = torch.zeros_like(ka), torch.zeros_like(kp), torch.zeros_like(v)
    delta_all = (d_out * out).sum(-1)  # (B, Hkv, G, Lq)
    for qs, qe in tiles.q_blocks():
        qa_r, qp_r, do_r = _rows(qa, qs, qe), _rows(qp, qs, qe), _rows(d_out, qs, qe)
        lse_r = lse[:, :, :, qs:qe].reshape(b, hk, -1)
        # rows that saw no key have lse = -inf: make their probabilities exactly 0
        lse_r = torch.where(torch.isinf(lse_r), torch.full_like(lse_r, float("inf")), lse_r)
        delta_r = delta_all[:, :, :, qs:qe].reshape(b, hk, -1)
        dqa_r = torch.zeros_like(qa_r)
        dqp_r = torch.zeros_like(qp_r)
        for ks, ke in tiles.k_blocks(qs, qe):
            scores, amp, phase, cos, scale, _ = _tile(qa_r, ka, qp_r, kp, tiles, qs, qe, ks, ke)
            p = torch.exp(scores - lse_r.unsqueeze(-1))
            v_blk = v[:, :, ks:ke]
            dv[:, :, ks:ke] += p.transpose(-1, -2) @ do_r
            d_scores = p * (do_r @ v_blk.transpose(-1, -2) - delta_r.unsqueeze(-1))
            d_amp = d_scores * cos
            d_prod = d_scores * amp
            d_prod *= torch.sin(phase)
            d_prod *= scale
            d_prod.neg_()
            dqa_r += d_amp @ ka[:, :, ks:ke]
            dqp_r += d_prod @ kp[:, :, ks:ke]
            dka[:, :, ks:ke] += d_amp.transpose(-1, -2) @ qa_r
            dkp[:, :, ks:ke] += d_prod.transpose(-1, -2) @ qp_r
        dqa[:, :, :, qs:qe] = dqa_r.view(b, hk, g, qe - qs, -1)
        dqp[:, :, :, qs:qe] = dqp_r.view(b, hk, g, qe - qs, -1)
    return dqa, dka, dqp, dkp, dv


def _grouped(x: torch.Tensor, h_kv: int) -> torch.Tensor:
    b, h, length, d = x.shape
    return x.reshape(b, h_kv, h // h_kv, length, d)


def _prepare(qa, ka, qp, kp, v, dtype):
    """Cast to the compute dtype and group the query heads: q parts become (B, Hkv, G, L, d)."""
    h_kv = ka.shape[1]
    cast = [t.to(dtype) for t in (qa, ka, qp, kp, v)]
    cast[0], cast[2] = _grouped(cast[0], h_kv), _grouped(cast[2], h_kv)
    return cast


class _ChunkedTapa(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qa, ka, qp, kp, v, alpha, causal, q_offset, k_offset, block):
        h, h_kv = qa.shape[1], ka.shape[1]
        dtype = compute_dtype(qa.dtype)
        tiles = _Tiles(qa.shape[2], ka.shape[2], h // h_kv, alpha, causal, q_offset, k_offset, block, qa.device, dtype)
        out, lse = _forward(*_prepare(qa, ka, qp, kp, v, dtype), tiles)
        ctx.save_for_backward(qa, ka, qp, kp, v, out, lse)
        ctx.tiles = tiles  # its distance tables and masks are reused by the backward
        b, _, _, lq, dv = out.shape
        return out.reshape(b, h, lq, dv).to(v.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        qa, ka, qp, kp, v, out, lse = ctx.saved_tensors
        tiles = ctx.tiles
        d_out = _grouped(d_out.to(tiles.dtype), ka.shape[1])
        dqa, dka, dqp, dkp, dv = _backward(*_prepare(qa, ka, qp, kp, v, tiles.dtype), out, lse, d_out, tiles)
        ctx.tiles = None
        shaped = [
            dqa.reshape(qa.shape).to(qa.dtype),
            dka.to(ka.dtype),
            dqp.reshape(qp.shape).to(qp.dtype),
            dkp.to(kp.dtype),
            dv.to(v.dtype),
        ]
        return (*shaped, None, None, None, None, None)


def chunked_attention(
    parts: Parts,
    v: torch.Tensor,
    *,
    alpha: float,
    causal: bool,
    q_offset: int = 0,
    k_offset: int = 0,
    block_size: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """TAPA attention with O(L) memory and exact gradients. Returns float32 if the parts are."""
    return _ChunkedTapa.apply(*parts, v, alpha, causal, q_offset, k_offset, block_size)
