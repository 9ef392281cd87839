"""TapaConfig: a Llama-style decoder whose attention is TAPA (arXiv 2509.12635), NoPE or ALiBi.

Written by ``tapa export-hf``; loads with ``trust_remote_code=True`` and needs only
transformers and torch.
"""

import math

from transformers import PretrainedConfig


class TapaConfig(PretrainedConfig):
    model_type = "tapa"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012 (transformers' convention)

    def __init__(
        self,
        vocab_size=259,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=None,
        head_dim=None,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        positional="tapa",
        tapa_alpha=0.1,
        tapa_theta=0.5,
        tapa_phase="quadratic",
        tapa_phase_scale=2 * math.pi,
        attention_bias=False,
        qkv_bias=False,
        initializer_range=0.02,
        tie_word_embeddings=True,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.positional = positional
        self.tapa_alpha = tapa_alpha
        self.tapa_theta = tapa_theta
        self.tapa_phase = tapa_phase
        # s in cos(s |m-n|^alpha q_P.k_P / sqrt(D_P)); 2 pi in the paper's Eq. 12
        self.tapa_phase_scale = tapa_phase_scale
        self.attention_bias = attention_bias
        self.qkv_bias = qkv_bias
        self.initializer_range = initializer_range
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
