"""The mechanism diagnostics recover planted structure from constructed models."""

import math

import pytest
import torch

from tapa.model import ModelConfig, TapaLM
from tapa.study.diagnostics import (
    attention_profile,
    diagnose,
    distance_share,
    induction_score,
    layer_scores,
    previous_token_score,
)


def model(**kw) -> TapaLM:
    base = {"vocab_size": 20, "d_model": 16, "n_layers": 1, "n_heads": 1, "init_std": 0.3}
    torch.manual_seed(0)
    return TapaLM(ModelConfig(**{**base, **kw})).eval()


def test_planted_distance_only_phase_is_recovered():
    """All embeddings equal: every position has the same q and k, so TAPA's phase is
    2 pi d^alpha c with one constant c, and the cosine depends on distance only."""
    m = model(positional="tapa", tapa_alpha=0.5)
    with torch.no_grad():
        m.embed.weight.copy_(m.embed.weight[:1].expand_as(m.embed.weight))
        attn = m.blocks[0].attn
        h = m.blocks[0].attn_norm(m.embed.weight[:1])
        q, k = attn.wq(h)[0], attn.wk(h)[0]
    c = (q[8:] @ k[8:]).item() / math.sqrt(8)  # theta 0.5: the last 8 of 16 dims are the phase part
    ids = torch.randint(0, 20, (2, 40))
    result = diagnose(m, ids, max_distance=16)
    layer = result["layers"][0]
    assert layer["cos_distance_share"] == [pytest.approx(1.0, abs=1e-6)]
    for d in (1, 2, 4, 8, 16):
        expected = 2 * math.pi * d**0.5 * abs(c)
        assert layer["phase"][str(d)]["median_abs"] == pytest.approx(expected, rel=1e-4)
        assert layer["phase"][str(d)]["mean_cos"] == pytest.approx(math.cos(expected), abs=1e-4)


def test_content_only_phase_has_no_distance_share():
    """alpha -> 0: |m-n|^alpha = 1 at every distance; the phase varies with content alone."""
    m = model(positional="tapa", tapa_alpha=1e-9, n_heads=2)
    result = diagnose(m, torch.randint(0, 20, (4, 64)), max_distance=32)
    assert max(result["layers"][0]["cos_distance_share"]) < 0.05


def test_alibi_with_blind_queries_matches_the_closed_form():
    """wq = 0: ALiBi scores are -s (m - n), so p(m, n) = exp(-s(m-n)) / sum_{j<=m} exp(-s j)."""
    m = model(positional="alibi", n_heads=2)
    with torch.no_grad():
        m.blocks[0].attn.wq.weight.zero_()
    ids = torch.randint(0, 20, (2, 32))
    probs = layer_scores(m, ids)[0]["probs"]
    slopes = m.blocks[0].attn.slopes.double()
    mm = 20
    for h, s in enumerate(slopes.tolist()):
        z = sum(math.exp(-s * j) for j in range(mm + 1))
        assert probs[0, h, mm, mm - 1].item() == pytest.approx(math.exp(-s) / z, rel=1e-5)
    prev = previous_token_score(probs)
    for h, s in enumerate(slopes.tolist()):
        expected = sum(math.exp(-s) / sum(math.exp(-s * j) for j in range(t + 1)) for t in range(1, 32)) / 31
        assert prev[h].item() == pytest.approx(expected, rel=1e-5)
    profile = attention_profile(probs, [1, 2, 4])
    for h, s in enumerate(slopes.tolist()):
        for i, d in enumerate([1, 2, 4]):
            expected = (
                sum(
                    sum(math.exp(-s * j) for j in range(1, d + 1)) / sum(math.exp(-s * j) for j in range(t + 1))
                    for t in range(4, 32)
                )
                / 28
            )
            assert profile[h, i].item() == pytest.approx(expected, rel=1e-5)
    result = diagnose(m, ids, max_distance=16)
    # each head's scores depend on distance only (pooled over heads they would not: slopes differ)
    assert result["layers"][0]["score_distance_share"] == [pytest.approx(1.0, abs=1e-9)] * 2
    period = 10
    ind = induction_score(m, period=period)
    for h, s in enumerate(slopes.tolist()):
        expected = (
            sum(
                math.exp(-s * (period - 1)) / sum(math.exp(-s * j) for j in range(t + 1))
                for t in range(period, 2 * period)
            )
            / period
        )
        assert ind[0, h].item() == pytest.approx(expected, rel=1e-5)


def test_distance_share_closed_forms():
    d = torch.tensor([1, 1, 2, 2])
    assert distance_share(torch.tensor([1.0, 1.0, 3.0, 3.0]), d) == pytest.approx(1.0)
    assert distance_share(torch.tensor([1.0, 3.0, 1.0, 3.0]), d) == pytest.approx(0.0)
    # between-group variance 1 of total 2: half
    assert distance_share(torch.tensor([0.0, 2.0, 2.0, 4.0]), d) == pytest.approx(0.5)


def test_phase_gradient_ratio_is_zero_when_the_phase_is_zero():
    """sin(0) = 0: with the phase rows of W_q and W_k zeroed, no gradient reaches them."""
    from tapa.study.diagnostics import phase_gradient_ratio

    m = model(positional="tapa", n_heads=2, n_layers=2)
    ids = torch.randint(0, 20, (2, 24))
    assert all(r > 0.01 for r in phase_gradient_ratio(m, ids))  # init std 0.3: phases far from 0
    with torch.no_grad():
        for block in m.blocks:
            for proj in (block.attn.wq, block.attn.wk):
                proj.weight.view(2, 8, -1)[:, 4:] = 0  # head_dim 8, theta 0.5: the last 4 rows are the phase
    assert phase_gradient_ratio(m, ids) == [0.0, 0.0]
