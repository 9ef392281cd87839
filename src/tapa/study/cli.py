"""``tapa study ablation|recall|diagnose``."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from tapa.study.ablation import LADDERS

    study = sub.add_parser("study", help="studies beyond the paper: ablation ladder, retrieval, diagnostics")
    verbs = study.add_subparsers(dest="study", required=True, metavar="STUDY")
    abl = verbs.add_parser("ablation", help="which axis (tokenizer, head_dim, LR, tokens) explains TAPA's gap to RoPE")
    abl.add_argument("--ladder", choices=list(LADDERS), default="default")
    abl.add_argument("--out", required=True, help="output directory (re-running it skips finished stages)")
    abl.add_argument("--cache-dir", help="token cache directory")
    abl.add_argument("--quiet", action="store_true")
    abl.set_defaults(func=_ablation)


def _ablation(args: argparse.Namespace) -> None:
    from tapa.study.ablation import LADDERS, run_ladder

    results = run_ladder(LADDERS[args.ladder], args.out, args.cache_dir, verbose=not args.quiet)
    for row in results["rows"]:
        if "tapa_over_rope" in row:
            nope = row.get("nope_over_rope")
            print(f"{row['name']}: TAPA/RoPE {row['tapa_over_rope']:.3f}" + (f", NoPE/RoPE {nope:.3f}" if nope else ""))
    print(f"report: {args.out}/report.md, {args.out}/results.json")
