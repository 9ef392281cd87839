"""Argument checks shared by the attention entry points (one-line errors)."""

from __future__ import annotations

import math

import torch

from tapa.errors import ConfigError, ShapeError

IMPLS = ("auto", "reference", "chunked", "fused", "triton")


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ConfigError(f"alpha: expected a number, got {type(alpha).__name__}; use e.g. alpha=0.1")
    if not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"alpha: must be a finite number > 0, got {alpha}; the paper uses alpha=0.1")
    return float(alpha)


def amplitude_dim(head_dim: int, theta: float) -> int:
    """Number of amplitude coordinates D_A = theta * D, checked to be a whole number in [1, D-1]."""
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta):
        raise ConfigError(f"theta: expected a number in (0, 1), got {theta!r}; the paper uses theta=0.5")
    d_a = theta * head_dim
    rounded = round(d_a)
    if abs(d_a - rounded) > 1e-6 or not 1 <= rounded <= head_dim - 1:
        raise ConfigError(
            f"theta: theta*head_dim = {theta}*{head_dim} = {d_a:g} is not a whole number in "
            f"[1, {head_dim - 1}]; choose theta = k/{head_dim} for an integer k in that range (e.g. 0.5)"
        )
    return int(rounded)


def check_offset(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}: must be an integer >= 0, got {value!r}")
    return value


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ConfigError(f"impl: unknown attention implementation {impl!r}; choose one of {', '.join(IMPLS)}")
    return impl


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    """q: (B, H, Lq, D); k: (B, Hkv, Lk, D); v: (B, Hkv, Lk, Dv) with Hkv dividing H."""
    tensors = {"q": q, "k": k} if v is None else {"q": q, "k": k, "v": v}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ShapeError(f"{name}: expected 4 dims (batch, heads, length, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ShapeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    if k.dtype != q.dtype or (v is not None and v.dtype != q.dtype):
        dtypes = ", ".join(f"{n}={t.dtype}" for n, t in tensors.items())
        raise ShapeError(f"dtype mismatch: {dtypes}; cast them to one dtype")
    if k.device != q.device or (v is not None and v.device != q.device):
        raise ShapeError("device mismatch: q, k and v must be on the same device")
    if k.shape[0] != q.shape[0]:
        raise ShapeError(f"batch mismatch: q has batch {q.shape[0]}, k has {k.shape[0]}")
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"head_dim mismatch: q has {q.shape[-1]}, k has {k.shape[-1]}; they must be equal")
    h, h_kv = q.shape[1], k.shape[1]
    if h_kv == 0 or h % h_kv != 0:
        raise ShapeError(f"heads mismatch: k has {h_kv} heads, which must divide q's {h} heads (grouped-query)")
    if v is not None and v.shape[:3] != k.shape[:3]:
        raise ShapeError(f"v shape {tuple(v.shape)} does not match k {tuple(k.shape)} in (batch, heads, length)")
