"""Theory tools: closed forms against Monte Carlo, decay slopes, RoPE's expected score against
rotated random vectors, and the CLI."""

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tapa.errors import ConfigError
from tapa.positional import apply_rotary
from tapa.theory import rope
from tapa.theory import tapa as tp


def test_tapa_monte_carlo_agrees_with_closed_form_within_its_ci():
    dim, theta, alpha = 8, 0.5, 1.0
    mean = np.r_[np.full(4, 0.5), np.zeros(4)]
    dist = tp.GaussianQK(dim, q_mean=mean, k_mean=mean)
    lam = np.array([0.1, 0.3, 1.0, 3.0, 10.0])
    # E[q_A.k_A] = 4 * 0.25 = 1; E[(q_A.k_A)^2] = 4 * 1.25^2 + 12 * 0.25^2 = 7
    exact = tp.closed_form(lam, dim, theta, alpha, amp_mean=1.0, amp_second=7.0)
    # the distances share one sample, so their errors are correlated: check each against the
    # 99.9% interval (3.29 standard errors; mean_ci and var_ci are 1.96 standard errors)
    mc = tp.monte_carlo(lam, dim, theta, alpha, dist, samples=200_000, seed=1)
    assert np.all(np.abs(mc["mean"] - exact["mean"]) <= mc["mean_ci"] * 3.29 / 1.96)
    assert np.all(np.abs(mc["var"] - exact["var"]) <= mc["var_ci"] * 3.29 / 1.96)
    assert exact["var"][-1] == pytest.approx(exact["var_limit"], rel=1e-3) and exact["var_limit"] == 7 / 8


def test_closed_form_phase_factor_is_the_gaussian_characteristic_function():
    # E cos(c X.Y) for independent X, Y ~ N(0, I_p) = (1 + c^2)^(-p/2): check by quadrature-free MC in 1-D
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 2_000_000, generator=gen, dtype=torch.float64)
    for c in (0.5, 1.0, 2.0):
        assert torch.cos(c * x * y).mean().item() == pytest.approx((1 + c**2) ** -0.5, abs=3e-3)


@pytest.mark.parametrize(("dim", "theta", "alpha"), [(4, 0.5, 1.0), (8, 0.5, 0.5)])
def test_fitted_decay_slope_within_10_percent(dim, theta, alpha):
    lam = tp.decay_distances(dim, theta, alpha)
    estimate = tp.conditional_mean(lam, dim, theta, alpha, amp_mean=1.0, samples=400_000)
    slope = tp.fit_slope(lam, estimate)
    assert slope == pytest.approx(-alpha * (1 - theta) * dim, rel=0.10)


def test_theta_split_must_be_whole():
    with pytest.raises(ConfigError, match="whole number"):
        tp.split_dims(6, 0.25)


def test_rope_expected_score_equals_the_average_of_rotated_random_scores():
    dim, base, mu0, nu0, n = 8, 100.0, 0.8, -0.6, 400_000
    # per pair: E q = (1, 0), E k = (a, b) gives E A_d = a = mu0, E B_d = q0 k1 - q1 k0 -> b = nu0
    q_mean = torch.tensor([1.0, 0.0] * (dim // 2), dtype=torch.float64)
    k_mean = torch.tensor([mu0, nu0] * (dim // 2), dtype=torch.float64)
    w = torch.as_tensor(rope.angular_frequencies(dim, base), dtype=torch.float64)
    for seed, (m, kpos) in enumerate([(5, 5), (9, 2), (40, 3), (3, 20)]):
        gen = torch.Generator().manual_seed(seed)  # a fresh sample per distance
        q = q_mean + 0.7 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
        k = k_mean + 0.7 * torch.randn(n, dim, generator=gen, dtype=torch.float64)
        ang_q, ang_k = (m * w).repeat_interleave(2), (kpos * w).repeat_interleave(2)
        qr = apply_rotary(q, ang_q.cos(), ang_q.sin(), interleaved=True)  # the model's own rotation
        kr = apply_rotary(k, ang_k.cos(), ang_k.sin(), interleaved=True)
        scores = (qr * kr).sum(-1) / math.sqrt(dim)
        ci = 3.29 * scores.std().item() / math.sqrt(n)  # 99.9%: four independent checks
        expected = rope.expected_score(np.array([m - kpos]), dim, base, mu0, nu0)[0]
        assert abs(scores.mean().item() - expected) <= ci


def test_cycles_convention_is_radians_times_two_pi():
    lam = np.array([3.0, 17.0])
    cycles = rope.expected_score(lam, 16, 1e4, 1.0, 0.3, "cycles")
    radians = rope.expected_score(2 * math.pi * lam, 16, 1e4, 1.0, 0.3, "radians")
    np.testing.assert_allclose(cycles, radians)
    with pytest.raises(ConfigError, match="convention"):
        rope.angular_frequencies(16, 1e4, "degrees")


def test_theorem_2_1_coverage_is_dense_for_small_d_and_theorem_2_2_near_beats_far():
    small = rope.coverage(4, 5e5, 1.0, 0.5, 1e5, 1e6)
    assert small["largest_gap_fraction"] < 0.01  # Weyl: the values fill [-R, R]
    big = rope.coverage(128, 5e5, 1.0, 0.5, 1e5, 1e6)
    assert big["largest_gap_fraction"] > small["largest_gap_fraction"]  # averages over 64 phases concentrate
    result = rope.theorem_2_2(128, 1e8, 1.0, 0.5)
    assert result["min_gap"] > abs(1.0) / 8 and result["fraction"] == 1.0
    gap = rope.near_far_gap(np.array([2]), np.array([1e8]), 128, 1e8, -1.0, 0.0)
    assert gap[0, 0] > 0  # sgn(mu0) makes the gap positive for negative mu0 too


def test_theorem_2_3_range_shrinks_with_the_base():
    ranges = [rope.bias_range(64, b, 1.0, 0.5, 4096) for b in (1e3, 1e5, 1e7, 1e9)]
    assert all(a > b for a, b in itertools.pairwise(ranges))


def test_theory_cli_writes_numbers_and_figures(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "tapa.cli", "theory", "--out", str(tmp_path), "--samples", "20000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "theory.json").read_text())
    assert {"rope", "tapa"} <= set(report) and len(report["tapa"]["decay"]) == 4
    for name in ("rope_expected_score.png", "rope_theorems.png", "tapa_bias_variance.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run(
        [sys.executable, "-m", "tapa.cli", "theory", "--out", str(tmp_path / "x"), "--mu0", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "mu0: must be non-zero" in bad.stderr
