"""RoPE's token-agnostic distance bias (docs/paper.md section 1, the paper's Section 2).

Under Assumption 2.1 (E A_d = mu_0 and E B_d = nu_0 for every d):

    E score(lambda) = (1/sqrt(D)) * sum_d [mu_0 cos(lambda w_d) + nu_0 sin(lambda w_d)]

with w_d = base^(-2d/D) radians per token (``convention="radians"``, what models use) or
w_d = 2 pi theta_0^(2d/D), theta_0 = 1/base (``"cycles"``, the paper's proofs).
"""

from __future__ import annotations

import math

import numpy as np

from tapa.errors import ConfigError

CONVENTIONS = ("radians", "cycles")


def angular_frequencies(head_dim: int, base: float, convention: str = "radians") -> np.ndarray:
    """w_d for d = 0 .. D/2 - 1, in radians per token of distance."""
    if convention not in CONVENTIONS:
        raise ConfigError(f"convention: unknown {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if head_dim < 2 or head_dim % 2:
        raise ConfigError(f"head_dim: must be an even integer >= 2, got {head_dim}")
    exponents = 2 * np.arange(head_dim // 2) / head_dim
    w = base ** (-exponents)
    return w if convention == "radians" else 2 * math.pi * w


def expected_score(
    distances: np.ndarray, head_dim: int, base: float, mu0: float, nu0: float, convention: str = "radians"
) -> np.ndarray:
    """E score_RoPE at each distance lambda (exact under Assumption 2.1)."""
    w = angular_frequencies(head_dim, base, convention)
    angles = np.multiply.outer(np.asarray(distances, dtype=np.float64), w)
    return (mu0 * np.cos(angles) + nu0 * np.sin(angles)).sum(-1) / math.sqrt(head_dim)


def coverage(
    head_dim: int,
    base: float,
    mu0: float,
    nu0: float,
    start: float,
    stop: float,
    samples: int = 200_000,
    convention: str = "radians",
    seed: int = 0,
) -> dict:
    """Theorem 2.1: how densely (2/sqrt(D)) E score(lambda), lambda uniform in [start, stop],
    covers [-R, R], R = sqrt(mu_0^2 + nu_0^2). Reports the largest gap between sorted values
    (as a fraction of 2R, including the gaps to the ends) and the range reached."""
    rng = np.random.default_rng(seed)
    lam = rng.uniform(start, stop, samples)
    values = 2 / math.sqrt(head_dim) * expected_score(lam, head_dim, base, mu0, nu0, convention)
    radius = math.hypot(mu0, nu0)
    points = np.sort(np.clip(values, -radius, radius))
    gaps = np.diff(np.concatenate([[-radius], points, [radius]]))
    return {
        "radius": radius,
        "min": float(values.min()),
        "max": float(values.max()),
        "largest_gap_fraction": float(gaps.max() / (2 * radius)),
        "samples": samples,
        "lambda_range": [start, stop],
    }


def near_far_gap(
    near: np.ndarray, far: np.ndarray, head_dim: int, base: float, mu0: float, nu0: float, convention: str = "cycles"
) -> np.ndarray:
    """Theorem 2.2's quantity sgn(mu_0)/sqrt(D) * (E score(near) - E score(far)) for every
    (near, far) pair: shape (len(near), len(far))."""
    e_near = expected_score(near, head_dim, base, mu0, nu0, convention)
    e_far = expected_score(far, head_dim, base, mu0, nu0, convention)
    return np.sign(mu0) / math.sqrt(head_dim) * (e_near[:, None] - e_far[None, :])


def theorem_2_2(
    head_dim: int,
    base: float,
    mu0: float,
    nu0: float,
    far_samples: int = 2000,
    convention: str = "cycles",
    seed: int = 0,
) -> dict:
    """Near pairs 1 < lambda < theta_0^(-1/4)/8 (integers), far pairs lambda' > 1/theta_0
    (``far_samples`` log-uniform in [1/theta_0, 1000/theta_0]): the fraction of pairs whose
    gap exceeds |mu_0|/8, and the smallest gap."""
    theta0 = 1 / base
    near = np.arange(2, max(2, math.ceil(theta0 ** (-0.25) / 8)))
    if len(near) == 0:
        return {"base": base, "near": [], "fraction": float("nan"), "min_gap": float("nan")}
    rng = np.random.default_rng(seed)
    far = np.exp(rng.uniform(math.log(1 / theta0), math.log(1000 / theta0), far_samples))
    gap = near_far_gap(near, far, head_dim, base, mu0, nu0, convention)
    threshold = abs(mu0) / 8
    return {
        "base": base,
        "near": [int(near[0]), int(near[-1])],
        "far": [1 / theta0, 1000 / theta0],
        "threshold": threshold,
        "fraction": float((gap > threshold).mean()),
        "min_gap": float(gap.min()),
        "mean_gap": float(gap.mean()),
    }


def bias_range(
    head_dim: int, base: float, mu0: float, nu0: float, max_distance: int, convention: str = "radians"
) -> float:
    """Theorem 2.3: max - min of E score over distances 0 .. max_distance (shrinks as base grows)."""
    values = expected_score(np.arange(max_distance + 1), head_dim, base, mu0, nu0, convention)
    return float(values.max() - values.min())
