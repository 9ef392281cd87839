"""TAPA attention: scores (Eq. 12), reference and memory-efficient chunked kernels, phase variants."""

from tapa.attention.api import resolve_impl, tapa_attention, tapa_attention_parts
from tapa.attention.chunked import chunked_attention
from tapa.attention.phase import PHASES, Parts, TapaPhase, linear_parts, quadratic_parts
from tapa.attention.reference import parts_scores, phase_scale, reference_attention, tapa_scores

__all__ = [
    "PHASES",
    "Parts",
    "TapaPhase",
    "chunked_attention",
    "linear_parts",
    "parts_scores",
    "phase_scale",
    "quadratic_parts",
    "reference_attention",
    "resolve_impl",
    "tapa_attention",
    "tapa_attention_parts",
    "tapa_scores",
]
