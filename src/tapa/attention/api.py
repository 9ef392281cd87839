"""Public TAPA attention entry points."""

from __future__ import annotations

import torch

from tapa.attention.chunked import DEFAULT_BLOCK, chunked_attention
from tapa.attention.fused_cpu import fused_cpu_attention, fused_cpu_available
from tapa.attention.phase import TWO_PI, Parts, quadratic_parts
from tapa.attention.reference import reference_attention
from tapa.attention.triton_kernel import triton_attention, triton_available
from tapa.attention.validation import check_alpha, check_impl, check_offset, check_qkv
from tapa.errors import ConfigError

# On CPU, "auto" uses the fused kernel whenever it could be built (tapa.attention.fused_cpu):
# it is faster than the reference and the chunked kernel at every size measured, decoding
# included (docs/benchmarks.md, docs/history.md). Without it (or on other devices) "auto" keeps the
# reference (one batched matmul per step) for decoding (a few query rows) and for short
# sequences, while all score matrices fit a modest budget; otherwise the
# chunked kernel is faster and its memory stays linear. Measured on CPU, whole-model
# forward + backward (d_model 192, 4 layers, 4 heads): reference and chunked are level at
# L = 64 and 128, chunked is 1.25x faster at L = 256 (B = 32) and 2.6x at L = 512 (B = 16);
# for one decoded query over 16K keys the reference is 3x faster (docs/history.md, 2026-11-25).
AUTO_MAX_SHORT = 1 << 15  # Lq * Lk of a "short" sequence (L <= 181)
AUTO_DECODE_ROWS = 16  # query rows that count as decoding
AUTO_MAX_PER_HEAD = 1 << 19  # Lq * Lk when decoding
AUTO_MAX_TOTAL = 1 << 24  # B * H * Lq * Lk (64 MiB per float32 score tensor)


def resolve_impl(impl: str, batch: int, heads: int, lq: int, lk: int, device: torch.device | None = None) -> str:
    """The kernel ``impl`` stands for: itself, or for ``"auto"`` the fastest available one."""
    check_impl(impl)
    if impl != "auto":
        return impl
    if (device is None or device.type == "cpu") and fused_cpu_available():
        return "fused"
    if device is not None and device.type == "cuda" and triton_available():
        return "triton"
    decoding = lq <= AUTO_DECODE_ROWS and lq * lk <= AUTO_MAX_PER_HEAD
    small = (decoding or lq * lk <= AUTO_MAX_SHORT) and batch * heads * lq * lk <= AUTO_MAX_TOTAL
    return "reference" if small else "chunked"


def tapa_attention_parts(
    parts: Parts,
    v: torch.Tensor,
    *,
    alpha: float = 0.1,
    causal: bool = True,
    q_offset: int = 0,
    k_offset: int = 0,
    impl: str = "auto",
    block_size: int = DEFAULT_BLOCK,
) -> torch.Tensor:
    """TAPA attention from pre-scaled parts (see :mod:`tapa.attention.phase`), in the parts' dtype."""
    alpha = check_alpha(alpha)
    check_offset("q_offset", q_offset)
    check_offset("k_offset", k_offset)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size: must be a positive integer, got {block_size!r}")
    b, h, lq, _ = parts.qa.shape
    lk = parts.ka.shape[2]
    chosen = resolve_impl(impl, b, h, lq, lk, parts.qa.device)
    if chosen == "reference":
        return reference_attention(parts, v, alpha=alpha, causal=causal, q_offset=q_offset, k_offset=k_offset)
    if chosen == "fused":
        if parts.qa.device.type != "cpu":
            raise ConfigError(f"impl: 'fused' is the CPU kernel, got tensors on {parts.qa.device}; use impl='auto'")
        out = fused_cpu_attention(parts, v, alpha=alpha, causal=causal, q_offset=q_offset, k_offset=k_offset)
        return out.to(parts.qa.dtype)
    if chosen == "triton":
        if not triton_available():
            raise ConfigError("impl: 'triton' needs the triton package: pip install 'tapa[triton]'")
        dtype = parts.qa.dtype
        if v.dtype in (torch.bfloat16, torch.float16):  # half-precision products, float32 phases in the kernel
            parts = Parts(*(t.to(v.dtype) for t in parts))
        out = triton_attention(parts, v, alpha=alpha, causal=causal, q_offset=q_offset, k_offset=k_offset)
        return out.to(dtype)
    out = chunked_attention(
        parts, v, alpha=alpha, causal=causal, q_offset=q_offset, k_offset=k_offset, block_size=block_size
    )
    return out.to(parts.qa.dtype)


def tapa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    alpha: float = 0.1,
    theta: float = 0.5,
    causal: bool = True,
    q_offset: int = 0,
    impl: str = "auto",
    block_size: int = DEFAULT_BLOCK,
    phase_scale: float = TWO_PI,
) -> torch.Tensor:
    """Token-Aware Phase Attention (Eq. 12): softmax(scores) @ v, shape (B, H, Lq, Dv).

    ``score(m, n) = (q_A.k_A / sqrt(D_A)) * cos(s |m-n|^alpha (q_P.k_P) / sqrt(D_P))``, s =
    ``phase_scale`` (2 pi as in the paper; 1 is the public forward-only code's; 0 turns the
    phase off, leaving NoPE on the amplitude coordinates).

    q: (B, H, Lq, D); k, v: (B, H_kv, Lk, D) with H_kv dividing H (grouped-query).
    Queries sit at positions ``q_offset .. q_offset + Lq - 1``, keys at ``0 .. Lk - 1``;
    with ``causal`` a query sees the keys at its own position or before (KV-cache decoding
    passes ``q_offset = Lk - Lq``). ``impl``: ``"reference"`` materialises the score
    matrix, ``"chunked"`` works tile by tile with O(L) memory and exact gradients
    (plain PyTorch), ``"fused"`` is the same algorithm as one C++ kernel on CPU,
    ``"triton"`` as Triton kernels on CUDA, and ``"auto"`` picks fused on CPU and triton on
    CUDA when they are available, else chunked for large inputs.
    Scores, phases and the softmax are computed in float32; the output has the dtype of q.
    """
    check_qkv(q, k, v)
    parts = quadratic_parts(q, k, theta, phase_scale)
    out = tapa_attention_parts(
        parts, v, alpha=alpha, causal=causal, q_offset=q_offset, impl=impl, block_size=block_size
    )
    return out.to(q.dtype)
