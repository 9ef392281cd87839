"""``tapa theory``: every statement of docs/paper.md sections 1-2 as numbers (theory.json) and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tapa.paper import PAPER_BASE
from tapa.theory import rope
from tapa.theory import tapa as tp
from tapa.utils.report import pyplot

DECAY_CASES = ((4, 0.5, 1.0), (8, 0.5, 0.5), (8, 0.5, 1.0), (6, 0.5, 0.5))


def rope_section(out: Path, head_dim: int, mu0: float, nu0: float, convention: str) -> dict[str, Any]:
    plt = pyplot()
    lam = np.unique(np.geomspace(1, 1e6, 4000).round())
    fig, ax = plt.subplots(figsize=(8, 4))
    for base in (1e4, PAPER_BASE, 2e8):
        ax.plot(lam, rope.expected_score(lam, head_dim, base, mu0, nu0, convention), lw=0.8, label=f"base {base:g}")
    ax.set_xscale("log")
    ax.set_xlabel("distance m - n (tokens, log scale)")
    ax.set_ylabel("E score (Assumption 2.1)")
    ax.set_title(f"RoPE expected score, D={head_dim}, mu0={mu0}, nu0={nu0}, {convention} convention")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "rope_expected_score.png", dpi=120)
    plt.close(fig)

    coverage = [
        {"head_dim": d, **rope.coverage(d, PAPER_BASE, mu0, nu0, 1e5, 1e6, convention=convention)}
        for d in (4, 8, 16, head_dim)
    ]
    bases = [1e5, 1e6, 1e7, 1e8, 1e10, 1e12, 1e14, 1e16]
    near_far = [rope.theorem_2_2(head_dim, b, mu0, nu0) for b in bases]
    holds = [r["base"] for r in near_far if r["min_gap"] > r["threshold"]]
    range_bases = (1e4, PAPER_BASE, 1e7, 2e8, 1e10)
    ranges = {f"{b:g}": rope.bias_range(head_dim, b, mu0, nu0, 8192, convention) for b in range_bases}

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].semilogx([r["base"] for r in near_far], [r["min_gap"] for r in near_far], "o-", label="smallest gap")
    axes[0].semilogx([r["base"] for r in near_far], [r["mean_gap"] for r in near_far], "s--", label="mean gap")
    axes[0].axhline(abs(mu0) / 8, color="red", ls=":", label="|mu0| / 8 (Theorem 2.2)")
    axes[0].set_xlabel("RoPE base = 1 / theta_0")
    axes[0].set_ylabel("sgn(mu0)/sqrt(D) (E near - E far)")
    axes[0].set_title("Theorem 2.2: near beats far (cycles)")
    axes[0].legend(fontsize=8)
    axes[1].semilogx([float(b) for b in ranges], list(ranges.values()), "o-")
    axes[1].axvline(PAPER_BASE, color="grey", ls="--", label="paper's base 5e5")
    axes[1].set_xlabel("RoPE base")
    axes[1].set_ylabel("max - min of E score over 0..8192")
    axes[1].set_title("Theorem 2.3: the bias range shrinks with the base")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rope_theorems.png", dpi=120)
    plt.close(fig)
    paper = next(r for r in near_far if r["base"] == 1e6)
    return {
        "settings": {"head_dim": head_dim, "mu0": mu0, "nu0": nu0, "convention": convention},
        "theorem_2_1_coverage": coverage,
        "theorem_2_2": near_far,
        "theorem_2_2_holds_for_bases": holds,
        "theorem_2_2_at_paper_base": rope.theorem_2_2(head_dim, PAPER_BASE, mu0, nu0),
        "theorem_2_2_at_1e6": paper,
        "theorem_2_3_bias_range_by_base": ranges,
    }


def tapa_section(out: Path, samples: int) -> dict[str, Any]:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for dim, theta, alpha in DECAY_CASES:
        lam = tp.decay_distances(dim, theta, alpha)
        estimate = tp.conditional_mean(lam, dim, theta, alpha, amp_mean=1.0, samples=samples)
        exact = tp.closed_form(lam, dim, theta, alpha, 1.0, 1.0)["mean"]
        slope = tp.fit_slope(lam, estimate)
        expected = -alpha * (1 - theta) * dim
        rows.append(
            {
                "D": dim,
                "theta": theta,
                "alpha": alpha,
                "distances": [float(lam[0]), float(lam[-1])],
                "fitted_slope": slope,
                "predicted_slope": expected,
                "relative_error": abs(slope / expected - 1),
                "max_relative_gap_to_closed_form": float(np.abs(estimate / exact - 1).max()),
            }
        )
        line = axes[0].loglog(lam, estimate, "o", ms=3)[0]
        axes[0].loglog(
            lam,
            exact,
            "-",
            color=line.get_color(),
            label=f"D={dim}, theta={theta}, alpha={alpha}: slope {slope:.2f} (theory {expected:g})",
        )
    axes[0].set_xlabel("distance |m - n| (log scale)")
    axes[0].set_ylabel("E score (amplitude mean 1)")
    axes[0].set_title("Theorem 3.2: bias decays as |m-n|^(-alpha(1-theta)D)\n(dots: Monte Carlo, lines: closed form)")
    axes[0].legend(fontsize=7)

    dim, theta, alpha = 8, 0.5, 1.0
    mean = np.r_[np.full(4, 0.5), np.zeros(4)]
    dist = tp.GaussianQK(dim, q_mean=mean, k_mean=mean)
    amp_second = 4 * 1.25**2 + 12 * 0.25**2
    lam = np.geomspace(0.05, 20, 16)
    mc = tp.monte_carlo(lam, dim, theta, alpha, dist, samples=samples)
    exact = tp.closed_form(lam, dim, theta, alpha, 1.0, amp_second)
    axes[1].errorbar(lam, mc["var"], yerr=mc["var_ci"], fmt="o", ms=3, label="Var score, Monte Carlo (95% CI)")
    axes[1].plot(lam, exact["var"], "-", label="Var score, closed form")
    axes[1].errorbar(lam, mc["mean"], yerr=mc["mean_ci"], fmt="s", ms=3, label="E score, Monte Carlo (95% CI)")
    axes[1].plot(lam, exact["mean"], "--", label="E score, closed form")
    axes[1].axhline(exact["var_limit"], color="red", ls=":", label="sigma_0^2 / 2 (Theorem 3.3)")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("distance |m - n| (log scale)")
    axes[1].set_title("Theorem 3.3: the variance stays bounded below\n(D=8, theta=0.5, alpha=1; continuous distance)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "tapa_bias_variance.png", dpi=120)
    plt.close(fig)
    inside_mean = np.abs(mc["mean"] - exact["mean"]) <= mc["mean_ci"]
    inside_var = np.abs(mc["var"] - exact["var"]) <= mc["var_ci"]
    check = {"D": dim, "theta": theta, "alpha": alpha, "samples": samples, "distances": lam.tolist()}
    for key in ("mean", "mean_ci", "var", "var_ci"):
        check[key] = mc[key].tolist()
    check["mean_closed_form"], check["var_closed_form"] = exact["mean"].tolist(), exact["var"].tolist()
    check["var_limit"] = exact["var_limit"]
    check["mean_inside_ci"], check["var_inside_ci"] = float(inside_mean.mean()), float(inside_var.mean())
    return {"decay": rows, "monte_carlo_vs_closed_form": check}


def run_theory(
    out: str | Path,
    head_dim: int = 128,
    mu0: float = 1.0,
    nu0: float = 0.5,
    convention: str = "radians",
    samples: int = 400_000,
) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rope": rope_section(out, head_dim, mu0, nu0, convention), "tapa": tapa_section(out, samples)}
    (out / "theory.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report
