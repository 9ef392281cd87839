"""tapa: reference implementation of Token-Aware Phase Attention (arXiv 2509.12635)."""

from tapa.attention import tapa_attention, tapa_scores

__version__ = "0.1.0"
__all__ = ["__version__", "tapa_attention", "tapa_scores"]
