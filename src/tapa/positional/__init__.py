"""Positional encodings: the RoPE family (by Hugging Face ``rope_type`` name), ALiBi and NoPE.

NoPE (no positional encoding) needs no code: the model simply skips this step.
"""

from tapa.positional.alibi import alibi_bias, alibi_slopes
from tapa.positional.rope_frequencies import ROPE_FUNCTIONS, register, rope_inv_freq
from tapa.positional.rotary import RotaryEmbedding, apply_rotary, rotate_half, rotate_interleaved

POSITIONAL_SCHEMES = ("tapa", "rope", "alibi", "nope")

__all__ = [
    "POSITIONAL_SCHEMES",
    "ROPE_FUNCTIONS",
    "RotaryEmbedding",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "register",
    "rope_inv_freq",
    "rotate_half",
    "rotate_interleaved",
]
