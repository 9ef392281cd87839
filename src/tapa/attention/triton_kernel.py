"""TAPA attention in Triton (GPUs; CPU tensors under ``TRITON_INTERPRET=1`` for tests).

The same function as every other kernel here, from pre-scaled parts:

    a = qa . ka,   p = qp . kp,   c = 2 pi |m - n|^alpha,   s = a cos(c p),   out = softmax(s) v

- forward: one program per (query block, batch x head); online softmax over key blocks,
  stopping at the causal frontier (fully masked tiles are never visited); it stores the
  output and the row log-sum-exp L.
- backward (flash attention 2): P = exp(s - L), dS = P (dO . v - rowsum(dO * O)),
  da = dS cos(c p), dp = -dS a c sin(c p). One kernel per key block accumulates
  dv = P^T dO, dka = da^T qa, dkp = dp^T qp over the query heads that share the key head
  (grouped-query attention without copying k or v); another per query block accumulates
  dqa = da ka, dqp = dp kp. No atomics: results are deterministic.

Distances are exact int32 differences turned into float32; phases, the cosine and the
softmax are float32 whatever the input dtype; float32 inputs use IEEE float32 products
(TF32 would round the phase argument to ~1e-3). Float32 query parts with half-precision
keys (a half-precision model) run with half-precision products: see :func:`split_queries`.
Queries sit at positions q_offset + i, keys at k_offset + j (KV-cache prefill and decode).

Triton is an optional extra (``pip install tapa[triton]``); this module imports it lazily.
"""

from __future__ import annotations

import math
import os

import torch

from tapa.attention.phase import Parts, unit_last_stride

_kernels: dict[str, object] = {}


def triton_available() -> bool:
    """True when triton imports (the kernels still need a CUDA device, or TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _build() -> dict[str, object]:
    if not _kernels:
        import triton

        from tapa.attention import triton_jit

        _kernels.update({"triton": triton, "fwd": triton_jit.tapa_fwd, "bwd_kv": triton_jit.tapa_bwd_kv})
        _kernels["bwd_q"] = triton_jit.tapa_bwd_q
    return _kernels


def _pow2(n: int) -> int:
    """tl.dot needs each dimension >= 16 and a power of two: the padded width of a head part."""
    return max(16, 1 << (max(1, n) - 1).bit_length())


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def split_queries(parts: Parts, v: torch.Tensor) -> bool:
    """True for float32 query parts with keys and values in one half precision (what
    :func:`tapa.attention.quadratic_parts` gives for a bfloat16 or float16 model).

    Such inputs are not all cast to float32 (IEEE float32 products, without tensor cores, and
    a float32 copy of the keys at every call). The amplitude part qa is rounded to the keys'
    dtype, as a half-precision SDPA rounds q; the phase part, whose product is multiplied by
    up to 2 pi |m - n|^alpha, is split into qp_hi = half(qp) and qp_lo = half(qp - qp_hi),
    and qp . kp = qp_hi . kp + qp_lo . kp (about 16 mantissa bits for bfloat16, 22 for float16)."""
    half = parts.ka.dtype
    return (
        half in (torch.bfloat16, torch.float16)
        and parts.kp.dtype == half
        and v.dtype == half
        and parts.qa.dtype == torch.float32
        and parts.qp.dtype == torch.float32
    )


class _TritonTapa(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qa, ka, qp, kp, v, alpha, causal, q_offset, k_offset, block_m, block_n, split):
        k = _build()
        ctx.q_dtypes = (qa.dtype, qp.dtype)  # the query gradients come back in these
        if split:  # float32 query parts, half-precision keys: half-precision products
            qa, hi = qa.to(ka.dtype), qp.to(ka.dtype)
            qp, qpl = hi, (qp - hi).to(ka.dtype)  # qp - hi is float32 (type promotion)
        qa, ka, qp, kp, v = (unit_last_stride(t) for t in (qa, ka, qp, kp, v))
        if not split:
            qpl = qp  # not read
        b, h, lq, da = qa.shape
        h_kv, lk, dp, dv = ka.shape[1], ka.shape[2], qp.shape[-1], v.shape[-1]
        out = torch.empty(b, h, lq, dv, device=qa.device, dtype=v.dtype)
        lse = torch.empty(b, h, lq, device=qa.device, dtype=torch.float32)
        precision = "ieee" if qa.dtype == torch.float32 else "tf32"  # tf32 only matters for float32 inputs
        upcast = interpreting() and qa.dtype != torch.float32
        meta = {"CAUSAL": causal, "PRECISION": precision, "UPCAST": upcast, "SPLIT": split}
        meta.update({"BLOCK_M": block_m, "BLOCK_N": block_n})
        dims = {"DA": _pow2(da), "DP": _pow2(dp), "DV": _pow2(dv)}
        grid = (k["triton"].cdiv(lq, block_m), b * h)
        k["fwd"][grid](
            qa,
            ka,
            qp,
            qpl,
            kp,
            v,
            out,
            lse,
            *_strides(qa),
            *_strides(ka),
            *_strides(qp),
            *_strides(kp),
            *_strides(v),
            *_strides(out),
            h,
            h // h_kv,
            lq,
            lk,
            da,
            dp,
            dv,
            q_offset,
            k_offset,
            float(alpha),
            **meta,
            **dims,
        )
        ctx.save_for_backward(qa, ka, qp, qpl, kp, v, out, lse)
        ctx.args = (alpha, q_offset, k_offset, meta, dims)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        k = _build()
        qa, ka, qp, qpl, kp, v, out, lse = ctx.saved_tensors
        alpha, q_offset, k_offset, meta, dims = ctx.args
        d_out = d_out.contiguous()
        delta = (d_out.float() * out.float()).sum(-1).contiguous()
        b, h, lq, da = qa.shape
        h_kv, lk, dp, dv = ka.shape[1], ka.shape[2], qp.shape[-1], v.shape[-1]
        dqa = torch.empty(b, h, lq, da, device=qa.device, dtype=ctx.q_dtypes[0])
        dqp = torch.empty(b, h, lq, dp, device=qa.device, dtype=ctx.q_dtypes[1])
        dka = torch.empty(b, h_kv, lk, da, device=qa.device, dtype=ka.dtype)
        dkp = torch.empty(b, h_kv, lk, dp, device=qa.device, dtype=kp.dtype)
        dvv = torch.empty(b, h_kv, lk, dv, device=qa.device, dtype=v.dtype)
        strides = (*_strides(qa), *_strides(ka), *_strides(qp), *_strides(kp), *_strides(v), *_strides(d_out))
        shape = (lq, lk, da, dp, dv, q_offset, k_offset, float(alpha))
        cdiv = k["triton"].cdiv
        k["bwd_kv"][(cdiv(lk, meta["BLOCK_N"]), b * h_kv)](
            qa,
            ka,
            qp,
            qpl,
            kp,
            v,
            d_out,
            lse,
            delta,
            dka,
            dkp,
            dvv,
            *strides,
            h,
            h_kv,
            h // h_kv,
            *shape,
            **meta,
            **dims,
        )
        k["bwd_q"][(cdiv(lq, meta["BLOCK_M"]), b * h)](
            qa, ka, qp, qpl, kp, v, d_out, lse, delta, dqa, dqp, *strides, h, h // h_kv, *shape, **meta, **dims
        )
        return dqa, dka, dqp, dkp, dvv, None, None, None, None, None, None, None


def triton_attention(
    parts: Parts,
    v: torch.Tensor,
    *,
    alpha: float,
    causal: bool,
    q_offset: int = 0,
    k_offset: int = 0,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """TAPA attention by the Triton kernels: (B, H, Lq, Dv) in v's dtype.

    The parts and v may be float32, bfloat16 or float16 (all the same dtype); products
    accumulate in float32 and the phase, cosine and softmax are float32.
    """
    if not triton_available():
        raise RuntimeError("triton is not installed: pip install 'tapa[triton]'")
    if not (parts.qa.is_cuda or interpreting()):
        raise RuntimeError("the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
    split = split_queries(parts, v)
    if len({t.dtype for t in (*parts, v)}) != 1 and not split:  # other mixtures compute in the queries' dtype
        parts = Parts(*(t.to(parts.qa.dtype) for t in parts))
        v = v.to(parts.qa.dtype)
    width = max(parts.qa.shape[-1], parts.qp.shape[-1], v.shape[-1])
    block_m = block_m or (16 if parts.qa.shape[2] <= 16 else 64)
    block_n = block_n or (64 if width > 64 else 128 if not interpreting() else 32)
    if math.prod(parts.qa.shape) == 0 or parts.ka.shape[2] == 0:
        return v.new_zeros(*parts.qa.shape[:3], v.shape[-1])
    args = (float(alpha), bool(causal), int(q_offset), int(k_offset), block_m, block_n, split)
    return _TritonTapa.apply(*parts, v, *args)
