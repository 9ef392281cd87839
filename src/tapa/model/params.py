"""How many parameters a model config has, in closed form (no model built): the one count that
the 7B plan, the scale ladder's compute axis and the reports use."""

from __future__ import annotations

from tapa.model.config import ModelConfig


def parameter_count(c: ModelConfig) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of ``c``, in closed form: per layer q, k, v, o
    (and their biases), the SwiGLU, two norms and, for quadratic_full TAPA, the per-head M and N;
    then the final norm and the embeddings (once when tied)."""
    q, kv = c.n_heads * c.head_size, c.kv_heads * c.head_size
    per_layer = c.d_model * (q + 2 * kv) + q * c.d_model + 3 * c.d_model * c.ffn_dim + 2 * c.d_model
    if c.attention_bias or c.qkv_bias:
        per_layer += q + 2 * kv + (c.d_model if c.attention_bias else 0)
    if c.positional == "tapa" and c.tapa_phase == "quadratic_full":
        per_layer += 2 * c.n_heads * c.head_size**2
    body = c.n_layers * per_layer + c.d_model
    embeddings = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    return body + embeddings, body
