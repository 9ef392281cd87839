"""``tapa theory`` and ``tapa bias``."""

from __future__ import annotations

import argparse

from tapa.errors import ConfigError
from tapa.theory.rope import CONVENTIONS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    theory = sub.add_parser("theory", help="check the paper's theorems numerically: figures and theory.json")
    theory.add_argument("--out", required=True, help="directory for the figures and theory.json")
    theory.add_argument("--head-dim", type=int, default=128, help="D for the RoPE theorems (default: 128)")
    theory.add_argument("--mu0", type=float, default=1.0, help="E A_d of Assumption 2.1 (default: 1.0)")
    theory.add_argument("--nu0", type=float, default=0.5, help="E B_d of Assumption 2.1 (default: 0.5)")
    theory.add_argument("--convention", choices=CONVENTIONS, default="radians", help="RoPE angle convention")
    theory.add_argument("--samples", type=int, default=400_000, help="Monte Carlo samples per estimate")
    theory.set_defaults(func=_theory)


def _theory(args: argparse.Namespace) -> None:
    from tapa.theory.report import run_theory

    if args.mu0 == 0:
        raise ConfigError("mu0: must be non-zero (Theorem 2.2 measures the gap against |mu0| / 8)")
    if args.samples < 1000:
        raise ConfigError(f"samples: at least 1000 are needed for a confidence interval, got {args.samples}")
    report = run_theory(args.out, args.head_dim, args.mu0, args.nu0, args.convention, args.samples)
    rope, tapa = report["rope"], report["tapa"]
    print(f"RoPE, D={args.head_dim}, mu0={args.mu0}, nu0={args.nu0}, {args.convention}:")
    for row in rope["theorem_2_1_coverage"]:
        print(
            f"  Theorem 2.1, D={row['head_dim']}: (2/sqrt D) E score over lambda in [1e5, 1e6] reaches "
            f"[{row['min']:.3f}, {row['max']:.3f}] of [-{row['radius']:.3f}, {row['radius']:.3f}]; "
            f"largest gap {row['largest_gap_fraction']:.2%} of the interval"
        )
    paper = rope["theorem_2_2_at_paper_base"]
    print(
        f"  Theorem 2.2 at base 5e5: near {paper['near']}, far >= 5e5: {paper['fraction']:.1%} of pairs beat "
        f"|mu0|/8 = {paper['threshold']:.3f} (smallest gap {paper['min_gap']:.3f}); holds at bases "
        f"{', '.join(f'{b:g}' for b in rope['theorem_2_2_holds_for_bases'])}"
    )
    ranges = ", ".join(f"{k}: {v:.2f}" for k, v in rope["theorem_2_3_bias_range_by_base"].items())
    print(f"  Theorem 2.3, range of E score over 0..8192 by base: {ranges}")
    print("TAPA:")
    for row in tapa["decay"]:
        print(
            f"  Theorem 3.2, D={row['D']}, theta={row['theta']}, alpha={row['alpha']}: fitted slope "
            f"{row['fitted_slope']:.3f} vs -alpha(1-theta)D = {row['predicted_slope']:g} "
            f"({row['relative_error']:.1%} off)"
        )
    check = tapa["monte_carlo_vs_closed_form"]
    print(
        f"  Theorem 3.3: Monte Carlo inside its 95% CI of the closed form at {check['mean_inside_ci']:.0%} (mean) "
        f"and {check['var_inside_ci']:.0%} (variance) of {len(check['distances'])} distances; variance -> "
        f"{check['var_limit']:.3f} (sigma_0^2 / 2), last value {check['var'][-1]:.3f}"
    )
    print(f"figures and theory.json in {args.out}/")
