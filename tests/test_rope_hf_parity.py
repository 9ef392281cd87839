"""RoPE variants against Hugging Face transformers' own functions (a test dependency)."""

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from tapa.positional import RotaryEmbedding, apply_rotary, rope_inv_freq  # noqa: E402

HEAD_DIM = 32
LONG_SHORT = {
    "short_factor": [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)],
    "long_factor": [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)],
}

# (rope_type, base, params, max_position_embeddings, seq_len)
CASES = [
    ("default", 10000.0, {}, 2048, None),
    ("default", 500000.0, {}, 2048, None),
    ("linear", 10000.0, {"factor": 8.0}, 2048, None),
    ("linear", 500000.0, {"factor": 2.5}, 2048, None),
    ("dynamic", 10000.0, {"factor": 4.0}, 256, None),
    ("dynamic", 10000.0, {"factor": 4.0}, 256, 1000),
    ("dynamic", 500000.0, {"factor": 2.0}, 512, 4096),
    ("yarn", 10000.0, {"factor": 8.0, "original_max_position_embeddings": 256}, 2048, None),
    ("yarn", 500000.0, {"factor": 4.0, "original_max_position_embeddings": 8192}, 32768, None),
    (
        "yarn",
        10000.0,
        {"factor": 16.0, "original_max_position_embeddings": 512, "beta_fast": 16.0, "beta_slow": 2.0},
        8192,
        None,
    ),
    (
        "yarn",
        10000.0,
        {"factor": 4.0, "original_max_position_embeddings": 256, "mscale": 0.707, "mscale_all_dim": 1.0},
        1024,
        None,
    ),
    ("yarn", 10000.0, {"factor": 8.0, "original_max_position_embeddings": 256, "attention_factor": 1.3}, 2048, None),
    (
        "llama3",
        500000.0,
        {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        131072,
        None,
    ),
    (
        "llama3",
        10000.0,
        {"factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 256},
        1024,
        None,
    ),
    ("longrope", 10000.0, {**LONG_SHORT, "original_max_position_embeddings": 256}, 1024, None),
    ("longrope", 10000.0, {**LONG_SHORT, "original_max_position_embeddings": 256}, 1024, 800),
    ("longrope", 10000.0, {**LONG_SHORT, "original_max_position_embeddings": 256, "factor": 2.0}, 1024, 800),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def hf_config(rope_type, base, params, max_pos):
    rope_parameters = {"rope_type": rope_type, "rope_theta": base, **params}
    return LlamaConfig(
        hidden_size=HEAD_DIM * 4,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_pos,
        rope_parameters=rope_parameters,
    )


def ours_params(rope_type, params, max_pos):
    extra = {"max_position_embeddings": max_pos} if rope_type in ("dynamic",) else {}
    if rope_type == "longrope" and "factor" not in params:
        extra = {"max_position_embeddings": max_pos}
    return {**params, **extra}


@pytest.mark.parametrize(("rope_type", "base", "params", "max_pos", "seq_len"), CASES, ids=IDS)
def test_inv_freq_and_attention_factor_match_transformers(rope_type, base, params, max_pos, seq_len):
    config = hf_config(rope_type, base, params, max_pos)
    if rope_type == "default":
        want_freq, want_factor = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        want_freq, want_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
    got_freq, got_factor = rope_inv_freq(
        rope_type, HEAD_DIM, base, seq_len=seq_len, **ours_params(rope_type, params, max_pos)
    )
    assert got_freq.dtype == torch.float32 and got_freq.shape == (HEAD_DIM // 2,)
    torch.testing.assert_close(got_freq, want_freq.float(), rtol=1e-6, atol=0)
    assert got_factor == pytest.approx(want_factor, rel=1e-12)


@pytest.mark.parametrize(("rope_type", "base", "params", "max_pos", "seq_len"), CASES, ids=IDS)
def test_rotated_q_k_match_apply_rotary_pos_emb(rope_type, base, params, max_pos, seq_len):
    length = seq_len or 300
    config = hf_config(rope_type, base, params, max_pos)
    hf_rope = LlamaRotaryEmbedding(config)
    q = torch.randn(2, 4, length, HEAD_DIM)
    k = torch.randn(2, 2, length, HEAD_DIM)
    positions = torch.arange(length).unsqueeze(0).expand(2, -1)
    cos_hf, sin_hf = hf_rope(q, positions)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)

    scaling = {"rope_type": rope_type, **ours_params(rope_type, params, max_pos)}
    ours = RotaryEmbedding(HEAD_DIM, base, scaling)
    cos, sin = ours(positions)
    got_q = ours.rotate(q, cos.unsqueeze(1), sin.unsqueeze(1))
    got_k = ours.rotate(k, cos.unsqueeze(1), sin.unsqueeze(1))
    torch.testing.assert_close(got_q, want_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k, want_k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("rope_type", "params", "new_base"),
    [
        ("ntk", {"factor": 8.0}, 10000.0 * 8.0 ** (32 / 30)),
        ("ntk", {"factor": 2.0}, 10000.0 * 2.0 ** (32 / 30)),
        ("abf", {"rope_theta": 5e5}, 5e5),
        ("abf", {"rope_theta": 2e8}, 2e8),
    ],
)
def test_static_ntk_and_abf_are_a_new_base(rope_type, params, new_base):
    got, factor = rope_inv_freq(rope_type, HEAD_DIM, 10000.0, **params)
    want = torch.tensor([new_base ** (-2 * d / HEAD_DIM) for d in range(HEAD_DIM // 2)], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    assert factor == 1.0


def test_yarn_attention_factor_closed_form():
    _, factor = rope_inv_freq("yarn", HEAD_DIM, 1e4, factor=8.0, original_max_position_embeddings=256)
    assert factor == pytest.approx(0.1 * math.log(8.0) + 1)


@pytest.mark.parametrize("factor", [0.25, 0.5, 1.0])
def test_partial_rotary_factor_equals_transformers(factor):
    # transformers rotates the first int(head_dim * partial_rotary_factor) dimensions of q and k
    # (StableLM's attention) and passes the rest through; tapa's model must do the same
    from transformers import StableLmConfig
    from transformers.models.stablelm.modeling_stablelm import StableLmRotaryEmbedding, apply_rotary_pos_emb

    from tapa.model import ModelConfig, TapaLM

    head_dim, length = 32, 11
    hf = StableLmConfig(hidden_size=4 * head_dim, num_attention_heads=4, partial_rotary_factor=factor, rope_theta=500.0)
    q, k = torch.randn(2, 4, length, head_dim), torch.randn(2, 4, length, head_dim)
    positions = torch.arange(length)[None]
    cos, sin = StableLmRotaryEmbedding(hf)(q, positions)
    rot = cos.shape[-1]
    q_rot, k_rot = apply_rotary_pos_emb(q[..., :rot], k[..., :rot], cos, sin)
    want_q, want_k = torch.cat((q_rot, q[..., rot:]), -1), torch.cat((k_rot, k[..., rot:]), -1)

    model = TapaLM(
        ModelConfig(d_model=4 * head_dim, n_heads=4, positional="rope", rope_base=500.0, partial_rotary_factor=factor)
    )
    assert model.config.rotary_dim == rot
    tab_cos, tab_sin = model.rope(torch.arange(length))
    got_q = apply_rotary(q, tab_cos, tab_sin)
    got_k = apply_rotary(k, tab_cos, tab_sin)
    torch.testing.assert_close(got_q, want_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=1e-6)
    if factor < 1:
        torch.testing.assert_close(got_q[..., rot:], q[..., rot:], rtol=0, atol=0)  # the rest carries no position


def test_partial_rotary_factor_is_validated():
    from tapa.errors import ConfigError
    from tapa.model import ModelConfig

    with pytest.raises(ConfigError, match="partial_rotary_factor: must be a number in"):
        ModelConfig(positional="rope", partial_rotary_factor=0)
    with pytest.raises(ConfigError, match="only applies to positional='rope'"):
        ModelConfig(positional="tapa", partial_rotary_factor=0.5)
    with pytest.raises(ConfigError, match="even number"):
        ModelConfig(d_model=64, n_heads=4, positional="rope", partial_rotary_factor=0.1)  # int(16 * 0.1) = 1
