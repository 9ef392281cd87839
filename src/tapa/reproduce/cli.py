"""``tapa reproduce --preset NAME --out DIR``."""

from __future__ import annotations

import argparse

from tapa.reproduce.presets import PRESETS


def add_parsers(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("reproduce", help="reproduce the paper's comparisons at small scale and write a report")
    rep.add_argument("--preset", choices=list(PRESETS), default="quick")
    rep.add_argument("--out", required=True, help="output directory (re-running it skips finished stages)")
    rep.add_argument("--cache-dir", help="token cache directory")
    rep.add_argument("--quiet", action="store_true")
    rep.add_argument(
        "--rejudge",
        action="store_true",
        help="recompute the verdicts (current rules) and the report of a finished --out from its "
        "results.json, without running any stage",
    )
    rep.set_defaults(func=_reproduce)


def _reproduce(args: argparse.Namespace) -> None:
    from tapa.reproduce.pipeline import rejudge, run_reproduce
    from tapa.reproduce.presets import get_preset

    if args.rejudge:
        results = rejudge(args.out)
    else:
        results = run_reproduce(get_preset(args.preset), args.out, args.cache_dir, verbose=not args.quiet)
    for key, v in results["verdicts"].items():
        print(f"claim {key}: {v['verdict']} ({v['evidence']})")
    now, total = results.get("wall_seconds", 0.0) / 60, results.get("stage_seconds", 0.0) / 60
    print(
        f"report: {args.out}/report.md, {args.out}/report.html, {args.out}/results.json "
        f"({now:.1f} min now, {total:.1f} min of stages in all)"
    )
