"""TAPA attention: scores (Eq. 12), the reference (oracle), chunked, fused CPU and Triton kernels, phase variants."""

from tapa.attention.api import resolve_impl, tapa_attention, tapa_attention_parts
from tapa.attention.chunked import chunked_attention
from tapa.attention.fused_cpu import fused_cpu_attention, fused_cpu_available
from tapa.attention.phase import PHASES, TWO_PI, Parts, TapaPhase, check_phase_scale, linear_parts, quadratic_parts
from tapa.attention.reference import distance_phase, parts_scores, reference_attention, tapa_scores
from tapa.attention.triton_kernel import triton_attention, triton_available

__all__ = [
    "PHASES",
    "TWO_PI",
    "Parts",
    "TapaPhase",
    "check_phase_scale",
    "chunked_attention",
    "distance_phase",
    "fused_cpu_attention",
    "fused_cpu_available",
    "linear_parts",
    "parts_scores",
    "quadratic_parts",
    "reference_attention",
    "resolve_impl",
    "tapa_attention",
    "tapa_attention_parts",
    "tapa_scores",
    "triton_attention",
    "triton_available",
]
