"""``tapa theory`` and ``tapa bias``."""

from __future__ import annotations

import argparse

import numpy as np

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
    theory.add_argument("--checkpoint", nargs="*", default=[], help="trained models to check Assumption 2.1 on")
    theory.add_argument("--cache-dir", help="token cache directory")
    theory.set_defaults(func=_theory)

    bias = sub.add_parser("bias", help="Appendix I: near-minus-far score differences of trained models")
    bias.add_argument("checkpoints", nargs="+", help="model directories (overlaid in one histogram)")
    bias.add_argument("--out", required=True, help="directory for bias.json and bias.png")
    bias.add_argument("--pairs", type=int, default=10_000, help="sampled queries (default: 10000, as the paper)")
    bias.add_argument("--near", type=int, help="a: near distances in [0, a] (default: 100, scaled to the context)")
    bias.add_argument("--far", type=int, help="b: far distances in [b, b + a] (default: 10000, scaled)")
    bias.add_argument("--max-tokens", type=int, default=262_144, help="held-out tokens to draw windows from")
    bias.add_argument("--seed", type=int, default=0)
    bias.add_argument("--cache-dir", help="token cache directory")
    bias.set_defaults(func=_bias)


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
    if args.checkpoint:
        _assumption(args)
    print(f"figures and theory.json in {args.out}/")


def _documents(checkpoint: str, max_tokens: int, cache_dir: str | None):
    from tapa.data.tokenizer import load_checkpoint_tokenizer
    from tapa.evaluate.heldout import heldout_documents
    from tapa.model import load_pretrained

    model = load_pretrained(checkpoint).eval()
    docs = heldout_documents(load_checkpoint_tokenizer(checkpoint), "books", "test", max_tokens, cache_dir)
    return model, docs


def _assumption(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from tapa.theory.bias import assumption_2_1, plot_assumption

    path = Path(args.out) / "theory.json"
    report = json.loads(path.read_text())
    report["assumption_2_1"] = {}
    for i, checkpoint in enumerate(args.checkpoint):
        model, docs = _documents(checkpoint, 65536, args.cache_dir)
        result = assumption_2_1(model, docs)
        report["assumption_2_1"][checkpoint] = result
        plot_assumption(result, Path(args.out) / f"assumption_2_1_{i}.png", f"{checkpoint} ({model.config.positional})")
        constant = sum(r["constant_across_d"] for r in result["heads"])
        print(
            f"Assumption 2.1 on {checkpoint}: E A_d constant across d (spread < 25% of |mean|) in {constant} of "
            f"{len(result['heads'])} heads; mean |mu0| {np.mean([abs(r['mu0']) for r in result['heads']]):.3f}, "
            f"mean spread over d {np.mean([r['std_of_E_A_d_over_d'] for r in result['heads']]):.3f}"
        )
    path.write_text(json.dumps(report, indent=1, default=float) + "\n")


def _bias(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from tapa.paper import PAPER_STATS
    from tapa.theory.bias import checkpoint_bias, plot_bias

    if args.pairs < 2:
        raise ConfigError(f"pairs: need at least 2 sampled queries, got {args.pairs}")
    samples, report = {}, {"paper": PAPER_STATS, "checkpoints": {}}
    for checkpoint in args.checkpoints:
        model, docs = _documents(checkpoint, args.max_tokens, args.cache_dir)
        label = f"{model.config.positional} ({Path(checkpoint).name})"
        samples[label], summary = checkpoint_bias(model, docs, args.pairs, args.near, args.far, args.seed)
        near, far = summary["near"][1], summary["far"][0]
        report["checkpoints"][checkpoint] = {"label": label, **summary}
        pooled = summary["pooled"]
        print(
            f"{label}: near [0, {near}] vs far [{far}, {far + near}], {pooled['n']:,} differences "
            f"(layers x heads x pairs): mean {pooled['mean']:.3f}, std {pooled['std']:.3f}, "
            f"skewness {pooled['skewness']:.3f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bias.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_bias(samples, out / "bias.png", "Distance bias of trained models (Appendix I)")
    rope, tapa = PAPER_STATS["rope"], PAPER_STATS["tapa"]
    print(f"paper: RoPE mean {rope['mean']}, std {rope['std']}; TAPA mean {tapa['mean']}, std {tapa['std']}")
    print(f"results in {out / 'bias.json'} and {out / 'bias.png'}")
