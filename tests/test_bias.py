"""Pair scores equal the model's own attention logits; Appendix I sampling on hand-built models."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tapa.errors import ConfigError
from tapa.model import ModelConfig, TapaLM, save_pretrained
from tapa.theory.bias import assumption_2_1, default_distances, moments, sample_bias
from tapa.theory.scores import capture_qk, pair_scores


@pytest.mark.parametrize("positional", ["tapa", "rope", "nope", "alibi"])
def test_pair_scores_reproduce_the_models_attention_output(positional):
    torch.manual_seed(0)
    model = TapaLM(ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, positional=positional, init_std=0.2))
    x = torch.randint(0, 256, (1, 24))
    seen = {}
    attn = model.blocks[1].attn
    h1 = attn.wv.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o))
    h2 = attn.wo.register_forward_hook(lambda m, i, o: seen.__setitem__("out", i[0]))
    qk = capture_qk(model, x)
    h1.remove(), h2.remove()
    v = seen["v"].view(1, 24, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)[0]  # (H, L, D)
    out = seen["out"].view(1, 24, 4, 8)[0].transpose(0, 1)  # (H, L, D)
    for m in (0, 7, 23):
        n = torch.arange(m + 1)
        scores = pair_scores(model, qk, torch.full_like(n, m), n)[1]  # layer 1: (H, m + 1)
        rebuilt = torch.softmax(scores, dim=-1)[:, None, :] @ v[:, : m + 1]
        torch.testing.assert_close(rebuilt[:, 0], out[:, m], rtol=1e-4, atol=1e-5)


def test_nope_pair_scores_by_hand():
    torch.manual_seed(0)
    model = TapaLM(ModelConfig(d_model=8, n_layers=1, n_heads=1, positional="nope"))
    with torch.no_grad():
        model.blocks[0].attn.wq.weight.copy_(torch.eye(8))
        model.blocks[0].attn.wk.weight.copy_(2 * torch.eye(8))
    x = torch.tensor([[3, 70, 101, 9, 44]])
    e = model.embed.weight[x[0]]
    h = e / torch.sqrt(e.pow(2).mean(-1, keepdim=True) + model.config.norm_eps)
    expected = 2 * (h[4] @ h[1]) / math.sqrt(8) - 2 * (h[4] @ h[0]) / math.sqrt(8)
    scores = pair_scores(model, capture_qk(model, x), torch.tensor([4, 4]), torch.tensor([1, 0]))[0, 0]
    assert (scores[0] - scores[1]).item() == pytest.approx(expected.item(), rel=1e-5)


def test_alibi_with_zero_queries_has_the_hand_computed_bias():
    torch.manual_seed(0)
    model = TapaLM(ModelConfig(d_model=16, n_layers=1, n_heads=2, positional="alibi"))
    with torch.no_grad():
        model.blocks[0].attn.wq.weight.zero_()  # every q.k = 0: the score is -slope * |m - n| alone
    docs = [torch.randint(0, 256, (400,))]
    sample = sample_bias(model, docs, pairs=500, near=5, far=100, seed=0)
    slopes = model.blocks[0].attn.slopes.numpy()
    for h, slope in enumerate(slopes):
        delta = sample.deltas[0, h]  # = slope * (d2 - d1), d2 - d1 in [far - near, far + near]
        assert delta.min() >= slope * 95 - 1e-4 and delta.max() <= slope * 105 + 1e-4
        assert delta.mean() == pytest.approx(slope * 100, rel=0.01)
    assert sample.deltas.shape == (1, 2, 500) and sample.windows == 3


def test_default_distances_follow_the_paper_or_scale():
    assert default_distances(32768) == (100, 10000)
    assert default_distances(256) == (3, 312)
    assert default_distances(8) == (1, 10)


def test_moments_and_too_short_documents():
    x = np.array([0.0, 0.0, 3.0])
    stats = moments(x)
    assert stats["mean"] == 1.0 and stats["std"] == pytest.approx(math.sqrt(2))
    assert stats["skewness"] == pytest.approx(2 / 2**1.5)  # third central moment 2, std^3 = 2^1.5
    model = TapaLM(ModelConfig(d_model=16, n_layers=1, n_heads=2))
    with pytest.raises(ConfigError, match="need a document of at least 1106 tokens"):
        sample_bias(model, [torch.zeros(500, dtype=torch.long)], 10, 5, 1100)


def test_assumption_2_1_recovers_a_constructed_mean():
    torch.manual_seed(0)
    model = TapaLM(ModelConfig(d_model=8, n_layers=1, n_heads=1, positional="rope", max_seq_len=64))
    with torch.no_grad():  # q = k = the normalised embedding: A_d = q_d k_d + q_{d+4} k_{d+4} > 0 on average
        model.blocks[0].attn.wq.weight.copy_(torch.eye(8))
        model.blocks[0].attn.wk.weight.copy_(torch.eye(8))
        model.embed.weight.copy_(torch.ones(259, 8))
    result = assumption_2_1(model, [torch.randint(0, 256, (64,))], pairs=500)
    row = result["heads"][0]
    assert row["mu0"] == pytest.approx(2.0, rel=1e-4) and row["nu0"] == pytest.approx(0.0, abs=1e-6)
    assert row["std_of_E_A_d_over_d"] < 1e-5 and row["constant_across_d"]


def test_bias_cli(tmp_path):
    torch.manual_seed(0)
    for name in ("rope", "tapa"):
        save_pretrained(
            TapaLM(ModelConfig(d_model=16, n_layers=1, n_heads=2, positional=name, max_seq_len=64)), tmp_path / name
        )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tapa.cli",
            "bias",
            str(tmp_path / "rope"),
            str(tmp_path / "tapa"),
            "--pairs",
            "200",
            "--out",
            str(tmp_path / "b"),
            "--max-tokens",
            "4000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "b" / "bias.json").read_text())
    assert len(report["checkpoints"]) == 2 and report["paper"]["rope"]["mean"] == 4.1
    first = next(iter(report["checkpoints"].values()))
    assert first["near"] == [0, 1] and first["far"] == [78, 79] and first["pooled"]["n"] == 400
    assert (tmp_path / "b" / "bias.png").read_bytes()[:4] == b"\x89PNG"
