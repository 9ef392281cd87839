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

from tapa.positional import RotaryEmbedding, rope_inv_freq  # noqa: E402

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
