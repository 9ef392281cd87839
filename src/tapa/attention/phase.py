"""Phase functions: turn q and k into the four TAPA "parts".

Every TAPA variant is computed by one kernel that sees four tensors, already scaled:

    score(m, n) = (qa . ka) * cos(2 pi |m - n|^alpha * (qp . kp))

The phase scale s (``phase_scale``; 2 pi in the paper's Eq. 12, 1 in the public forward-only
code, 0 switches the phase off) is folded into the query's phase part, qp <- qp * s / (2 pi),
which gives cos(s |m - n|^alpha (q_P . k_P) / sqrt(D_P)) exactly in every kernel without a
kernel of its own: one multiply per query row, none per score.

- ``quadratic`` (Eq. 12, the default): qa, ka are the first D_A = theta*D coordinates
  and qp, kp the last D_P = D - D_A; the queries carry the scales (qa = q_A / sqrt(D_A),
  qp = q_P / sqrt(D_P)), so that the key parts are views of the keys, never copied (a KV
  cache is read in place when decoding), in the keys' own dtype.
- ``quadratic_full`` (Eq. 9/10): learnable per-head D x D matrices M and N,
  qa = q M, ka = k, qp = q N, kp = k. Initialised to the Eq. 13 blocks, so at
  initialisation it equals ``quadratic``.
- ``linear`` (Eq. 16, ablation): phase = (sum(q_P) + sum(k_P)) / sqrt(D_P), written
  as a dot product of qp = [sum(q_P)/sqrt(D_P), 1] and kp = [1, sum(k_P)/sqrt(D_P)].

The query parts are float32 (docs/paper.md: phases in float32 even when the model runs in
bf16), or float64 for float64 inputs (useful for exact equivalence tests). Key parts that are
views keep the keys' dtype, so a bfloat16 cache is not copied to float32 at every decoding
step; each kernel computes in the query parts' dtype (the fused CPU kernel reads bfloat16
keys and values in place when decoding, the Triton kernel reads half-precision keys in place
with the float32 query phase part split into two half-precision parts, the reference and
chunked kernels cast).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from tapa.attention.validation import amplitude_dim
from tapa.errors import ConfigError

PHASES = ("quadratic", "quadratic_full", "linear")
TWO_PI = 2 * math.pi  # the paper's phase scale (Eq. 12); the kernels compute cos(2 pi |m-n|^alpha qp.kp)


def check_phase_scale(phase_scale: float) -> float:
    """``phase_scale`` as a float: a finite number >= 0 (0 switches the phase off: cos = 1)."""
    if (
        isinstance(phase_scale, bool)
        or not isinstance(phase_scale, (int, float))
        or not (math.isfinite(phase_scale) and phase_scale >= 0)
    ):
        raise ConfigError(f"phase_scale: must be a finite number >= 0 (2 pi in the paper), got {phase_scale!r}")
    return float(phase_scale)


def _phase_factor(phase_scale: float) -> float:
    """The factor on the query's phase part that turns the kernels' 2 pi into ``phase_scale``."""
    return 1.0 if phase_scale == TWO_PI else check_phase_scale(phase_scale) / TWO_PI


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half precisions and float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dim is contiguous (the key parts are such views of the keys),
    else a contiguous copy: the fused and Triton kernels take any row stride, not element strides."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


class Parts(NamedTuple):
    qa: torch.Tensor
    ka: torch.Tensor
    qp: torch.Tensor
    kp: torch.Tensor


def _split_scaled(t: torch.Tensor, d: int, scale_a: float, scale_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t[..., :d] * scale_a, t[..., d:] * scale_p); views of ``t`` when both scales are 1."""
    if scale_a == 1.0 and scale_p == 1.0:
        return t[..., :d], t[..., d:]
    return t[..., :d] * scale_a, t[..., d:] * scale_p


class _SplitScaled(torch.autograd.Function):
    """:func:`_split_scaled` with the same values and gradients, but the backward writes the
    gradient of ``t`` in one pass, ``cat(g_a * scale_a, g_p * scale_p)``, where autograd's
    slicing would zero-fill a full-size tensor per part and add them.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, d: int, scale_a: float, scale_p: float):  # type: ignore[override]
        ctx.d, ctx.scales, ctx.shape = d, (scale_a, scale_p), t.shape
        return _split_scaled(t, d, scale_a, scale_p)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_a: torch.Tensor | None, g_p: torch.Tensor | None):  # type: ignore[override]
        ref = g_a if g_a is not None else g_p
        grad = ref.new_empty(ctx.shape)
        for g, part, scale in ((g_a, grad[..., : ctx.d], ctx.scales[0]), (g_p, grad[..., ctx.d :], ctx.scales[1])):
            if g is None:
                part.zero_()
            elif scale == 1.0:
                part.copy_(g)
            else:
                torch.mul(g, scale, out=part)
        return grad, None, None, None


def quadratic_parts(q: torch.Tensor, k: torch.Tensor, theta: float, phase_scale: float = TWO_PI) -> Parts:
    """Eq. 12's parts: qa = q_A / sqrt(D_A), ka = k_A, qp = q_P s / (2 pi sqrt(D_P)), kp = k_P."""
    d = q.shape[-1]
    d_a = amplitude_dim(d, theta)
    d_p = d - d_a
    q32 = q.to(compute_dtype(q.dtype))
    # with autograd, the function whose backward is one pass; in inference (decoding) the plain
    # split, without an autograd function's call overhead
    grad = torch.is_grad_enabled() and (q32.requires_grad or k.requires_grad)
    split = _SplitScaled.apply if grad else _split_scaled
    qa, qp = split(q32, d_a, d_a**-0.5, d_p**-0.5 * _phase_factor(phase_scale))
    ka, kp = split(k, d_a, 1.0, 1.0)  # views of k, in k's dtype
    return Parts(qa, ka, qp, kp)


def linear_parts(q: torch.Tensor, k: torch.Tensor, theta: float, phase_scale: float = TWO_PI) -> Parts:
    """Eq. 16's parts: qp = [sum(q_P) / sqrt(D_P), 1] s / (2 pi), kp = [1, sum(k_P) / sqrt(D_P)]."""
    d = q.shape[-1]
    d_a = amplitude_dim(d, theta)
    d_p = d - d_a
    q32, k32 = q.to(compute_dtype(q.dtype)), k.to(compute_dtype(k.dtype))
    q_sum = q32[..., d_a:].sum(-1, keepdim=True) / d_p**0.5
    k_sum = k32[..., d_a:].sum(-1, keepdim=True) / d_p**0.5
    qp = torch.cat([q_sum, torch.ones_like(q_sum)], dim=-1)
    factor = _phase_factor(phase_scale)
    if factor != 1.0:  # no extra pass at the paper's 2 pi
        qp = qp * factor
    kp = torch.cat([torch.ones_like(k_sum), k_sum], dim=-1)
    return Parts(q32[..., :d_a] * d_a**-0.5, k32[..., :d_a], qp, kp)


def eq13_matrices(head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Eq. 13 block matrices M = diag(I/sqrt(D_A), 0) and N = diag(0, I/sqrt(D_P))."""
    d_a = amplitude_dim(head_dim, theta)
    d_p = head_dim - d_a
    m = torch.zeros(head_dim, head_dim)
    n = torch.zeros(head_dim, head_dim)
    m[:d_a, :d_a] = torch.eye(d_a) / d_a**0.5
    n[d_a:, d_a:] = torch.eye(d_p) / d_p**0.5
    return m, n


class TapaPhase(nn.Module):
    """Holds the phase choice (and, for ``quadratic_full``, the learnable M and N per head)."""

    def __init__(
        self, n_heads: int, head_dim: int, theta: float = 0.5, phase: str = "quadratic", phase_scale: float = TWO_PI
    ) -> None:
        super().__init__()
        if phase not in PHASES:
            raise ConfigError(f"tapa_phase: unknown phase {phase!r}; choose one of {', '.join(PHASES)}")
        amplitude_dim(head_dim, theta)
        self.phase = phase
        self.theta = theta
        self.phase_scale = check_phase_scale(phase_scale)
        if phase == "quadratic_full":
            m, n = eq13_matrices(head_dim, theta)
            self.m = nn.Parameter(m.expand(n_heads, -1, -1).clone())
            self.n = nn.Parameter(n.expand(n_heads, -1, -1).clone())

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> Parts:
        if self.phase == "quadratic":
            return quadratic_parts(q, k, self.theta, self.phase_scale)
        if self.phase == "linear":
            return linear_parts(q, k, self.theta, self.phase_scale)
        q32, k32 = q.to(compute_dtype(q.dtype)), k.to(compute_dtype(k.dtype))
        qa = torch.einsum("bhld,hde->bhle", q32, self.m.to(q32.dtype))
        qp = torch.einsum("bhld,hde->bhle", q32, self.n.to(q32.dtype))
        if self.phase_scale != TWO_PI:
            qp = qp * _phase_factor(self.phase_scale)
        return Parts(qa, k32, qp, k32)

    def extra_repr(self) -> str:
        scale = "" if self.phase_scale == TWO_PI else f", phase_scale={self.phase_scale:g}"
        return f"phase={self.phase}, theta={self.theta}{scale}"
