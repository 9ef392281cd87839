"""tapa_scores against an independent, elementwise implementation of Eq. 12."""

import math

import pytest
import torch

from tapa.attention import distance_phase, tapa_scores


def naive_eq12(q, k, alpha, theta, q_pos, k_pos):
    """Plain loops over batch, head, query, key and dimension, in Python floats (float64)."""
    b_sz, h_sz, lq, d = q.shape
    lk = k.shape[2]
    group = h_sz // k.shape[1]
    d_a = round(theta * d)
    d_p = d - d_a
    out = torch.zeros(b_sz, h_sz, lq, lk, dtype=torch.float64)
    amps, phases = torch.zeros_like(out), torch.zeros_like(out)
    qd, kd = q.double().tolist(), k.double().tolist()
    for b in range(b_sz):
        for h in range(h_sz):
            for i in range(lq):
                for j in range(lk):
                    qv, kv = qd[b][h][i], kd[b][h // group][j]
                    amp = sum(qv[x] * kv[x] for x in range(d_a)) / math.sqrt(d_a)
                    prod = sum(qv[x] * kv[x] for x in range(d_a, d)) / math.sqrt(d_p)
                    dist = abs(int(q_pos[i]) - int(k_pos[j]))
                    phase = 2 * math.pi * dist**alpha * prod
                    out[b, h, i, j] = amp * math.cos(phase)
                    amps[b, h, i, j], phases[b, h, i, j] = amp, phase
    return out, amps, phases


def assert_matches_float32(got, naive):
    """|got - want| <= 1e-5, plus the rounding float32 cannot avoid in cos(x) for a large phase x
    (x is known to ~8 ulp, i.e. 8 * 2^-24 * |x|, and the error is multiplied by |amp|)."""
    want, amp, phase = naive
    tol = 1e-5 + 1e-5 * want.abs() + 8 * 2**-24 * amp.abs() * phase.abs()
    err = (got.double() - want).abs()
    assert got.dtype == torch.float32
    assert bool((err <= tol).all()), f"max error {err.max():.3g}, max excess {(err - tol).max():.3g}"


@pytest.mark.parametrize(
    ("d", "theta", "alpha", "q_start", "k_start"),
    [
        (8, 0.5, 0.1, 0, 0),
        (8, 0.25, 0.5, 3, 0),
        (12, 0.75, 1.0, 0, 5),
        (16, 0.5, 0.1, 1000, 990),
        (6, 1 / 3, 0.3, 7, 2),
        (4, 0.5, 2.0, 0, 0),
    ],
)
def test_scores_match_elementwise_eq12(d, theta, alpha, q_start, k_start):
    q = torch.randn(2, 2, 5, d)
    k = torch.randn(2, 2, 6, d)
    q_pos = torch.arange(q_start, q_start + 5)
    k_pos = torch.arange(k_start, k_start + 6)
    got = tapa_scores(q, k, alpha=alpha, theta=theta, q_positions=q_pos, k_positions=k_pos)
    assert_matches_float32(got, naive_eq12(q, k, alpha, theta, q_pos, k_pos))


def test_scores_grouped_query_heads_match_elementwise():
    q = torch.randn(1, 4, 4, 8)
    k = torch.randn(1, 2, 4, 8)
    got = tapa_scores(q, k, alpha=0.5, theta=0.5)
    assert_matches_float32(got, naive_eq12(q, k, 0.5, 0.5, torch.arange(4), torch.arange(4)))


def test_default_positions_are_arange_and_diagonal_is_amplitude():
    q, k = torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
    got = tapa_scores(q, k)
    explicit = tapa_scores(q, k, q_positions=torch.arange(6), k_positions=torch.arange(6))
    torch.testing.assert_close(got, explicit)
    amp = (q[..., :4] * k[..., :4]).sum(-1) / 2.0
    torch.testing.assert_close(torch.diagonal(got, dim1=-2, dim2=-1), amp)


def test_scores_depend_on_positions_only_through_distance():
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8)
    a = tapa_scores(q, k, alpha=0.7, q_positions=torch.arange(5) + 2, k_positions=torch.arange(7))
    b = tapa_scores(q, k, alpha=0.7, q_positions=torch.arange(5) + 12345, k_positions=torch.arange(7) + 12343)
    torch.testing.assert_close(a, b)


def test_bfloat16_inputs_keep_float32_phase_at_long_distance():
    # positions past 256 are not representable in bf16; the phase must still use the exact distance
    q, k = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8)
    q_pos, k_pos = torch.tensor([5001, 5002, 5003]), torch.tensor([0, 1, 2])
    got = tapa_scores(q.bfloat16(), k.bfloat16(), alpha=1.0, q_positions=q_pos, k_positions=k_pos)
    assert_matches_float32(got, naive_eq12(q.bfloat16().float(), k.bfloat16().float(), 1.0, 0.5, q_pos, k_pos))


def test_distance_phase_table():
    got = distance_phase(torch.tensor([0, 4]), torch.tensor([0, 1, 8]), 0.5)
    want = 2 * math.pi * torch.tensor([[0.0, 1.0, 8**0.5], [2.0, 3**0.5, 2.0]])
    torch.testing.assert_close(got, want)
