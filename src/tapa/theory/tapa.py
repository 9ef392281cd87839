"""TAPA's distance bias and its variance (docs/paper.md section 2, Theorems 3.2 and 3.3).

Score of Eq. 12 at distance lambda for one (q, k) pair:

    S = (q_A . k_A / sqrt(D_A)) * cos(c(lambda) * q_P . k_P),   c = 2 pi lambda^alpha / sqrt(D_P)

Closed form, when (q_P, k_P) are independent N(0, I) and independent of the amplitude part:

    E S   = E[q_A . k_A] / sqrt(D_A) * (1 + c^2)^(-D_P / 2)
    E S^2 = E[(q_A . k_A)^2] / D_A * (1 + (1 + 4 c^2)^(-D_P / 2)) / 2

so E S decays like lambda^(-alpha D_P) = lambda^(-alpha (1 - theta) D) and Var S tends to
E[(q_A . k_A)^2] / (2 D_A) > 0: far tokens keep real interactions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tapa.errors import ConfigError


@dataclass(frozen=True)
class GaussianQK:
    """q and k independent, each N(mean, cov) in D dimensions (defaults: zero mean, identity)."""

    dim: int
    q_mean: np.ndarray | None = None
    k_mean: np.ndarray | None = None
    cov: np.ndarray | None = None

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        chol = torch.eye(self.dim, dtype=torch.float64)
        if self.cov is not None:
            chol = torch.linalg.cholesky(torch.as_tensor(self.cov, dtype=torch.float64))
        q = torch.randn(n, self.dim, generator=gen, dtype=torch.float64) @ chol.T
        k = torch.randn(n, self.dim, generator=gen, dtype=torch.float64) @ chol.T
        if self.q_mean is not None:
            q = q + torch.as_tensor(self.q_mean, dtype=torch.float64)
        if self.k_mean is not None:
            k = k + torch.as_tensor(self.k_mean, dtype=torch.float64)
        return q, k


def split_dims(dim: int, theta: float) -> tuple[int, int]:
    amp = theta * dim
    if abs(amp - round(amp)) > 1e-9 or not 1 <= round(amp) <= dim - 1:
        raise ConfigError(f"theta: theta*D = {amp:g} must be a whole number in [1, D-1]")
    return round(amp), dim - round(amp)


def phase_scale(distance: np.ndarray, alpha: float, phase_dim: int) -> np.ndarray:
    return 2 * math.pi * np.asarray(distance, dtype=np.float64) ** alpha / math.sqrt(phase_dim)


def closed_form(distance, dim: int, theta: float, alpha: float, amp_mean: float, amp_second: float) -> dict:
    """E S and Var S for standard-normal phase parts; ``amp_mean`` = E[q_A . k_A],
    ``amp_second`` = E[(q_A . k_A)^2]."""
    amp_dim, phase_dim = split_dims(dim, theta)
    c = phase_scale(distance, alpha, phase_dim)
    mean = amp_mean / math.sqrt(amp_dim) * (1 + c**2) ** (-phase_dim / 2)
    second = amp_second / amp_dim * (1 + (1 + 4 * c**2) ** (-phase_dim / 2)) / 2
    return {"mean": mean, "var": second - mean**2, "var_limit": amp_second / (2 * amp_dim)}


def monte_carlo(
    distance, dim: int, theta: float, alpha: float, dist: GaussianQK, samples: int = 200_000, seed: int = 0
) -> dict:
    """Plain Monte Carlo of E S and Var S at each distance, with 95% confidence half-widths
    (CLT for the mean; delta method with the fourth moment for the variance)."""
    amp_dim, phase_dim = split_dims(dim, theta)
    gen = torch.Generator().manual_seed(seed)
    q, k = dist.sample(samples, gen)
    amp = (q[:, :amp_dim] * k[:, :amp_dim]).sum(1) / math.sqrt(amp_dim)
    dot = (q[:, amp_dim:] * k[:, amp_dim:]).sum(1)
    out = {"mean": [], "mean_ci": [], "var": [], "var_ci": []}
    for c in phase_scale(np.atleast_1d(distance), alpha, phase_dim):
        s = amp * torch.cos(c * dot)
        mean, centred = s.mean(), s - s.mean()
        var = centred.pow(2).mean()
        out["mean"].append(mean.item())
        out["mean_ci"].append(1.96 * math.sqrt(var.item() / samples))
        out["var"].append(var.item())
        out["var_ci"].append(1.96 * math.sqrt(max(centred.pow(4).mean().item() - var.item() ** 2, 0) / samples))
    return {key: np.array(value) for key, value in out.items()}


def conditional_mean(
    distance, dim: int, theta: float, alpha: float, amp_mean: float, samples: int = 1_000_000, seed: int = 0
) -> np.ndarray:
    """Monte Carlo of E S with k_P integrated out exactly (Rao-Blackwellised): for standard-normal
    k_P, E[cos(c q_P . k_P) | q_P] = exp(-c^2 |q_P|^2 / 2); only q_P is sampled. This keeps the
    relative error small far enough out to measure the decay slope."""
    amp_dim, phase_dim = split_dims(dim, theta)
    gen = torch.Generator().manual_seed(seed)
    norm2 = torch.randn(samples, phase_dim, generator=gen, dtype=torch.float64).pow(2).sum(1)
    c = torch.as_tensor(phase_scale(np.atleast_1d(distance), alpha, phase_dim))
    return (amp_mean / math.sqrt(amp_dim) * torch.exp(-(c[:, None] ** 2) * norm2[None] / 2).mean(1)).numpy()


def fit_slope(distance, values) -> float:
    """Least-squares slope of log|values| against log(distance)."""
    x, y = np.log(np.asarray(distance, dtype=np.float64)), np.log(np.abs(np.asarray(values)))
    return float(np.polyfit(x, y, 1)[0])


def decay_distances(dim: int, theta: float, alpha: float, c_min: float = 5.0, span: float = 4.0, points: int = 12):
    """Distances where c(lambda) >= c_min (the power law is reached) over a factor ``span``."""
    _, phase_dim = split_dims(dim, theta)
    start = (c_min * math.sqrt(phase_dim) / (2 * math.pi)) ** (1 / alpha)
    return np.geomspace(max(start, 1.0), max(start, 1.0) * span, points)
