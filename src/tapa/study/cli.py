"""``tapa study ablation|recall|scale|convert|lr|phase-scale|real-convert|diagnose``."""

from __future__ import annotations

import argparse

OUT_HELP = "output directory (re-running it skips finished stages)"


def _staged(verbs: argparse._SubParsersAction, name: str, help_text: str, func, cache: bool = True):
    """A study verb with the flags every cached-stage study takes: --out, --cache-dir, --quiet."""
    parser = verbs.add_parser(name, help=help_text)
    parser.add_argument("--out", required=True, help=OUT_HELP)
    if cache:
        parser.add_argument("--cache-dir", help="token cache directory")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=func)
    return parser


def add_parsers(sub: argparse._SubParsersAction) -> None:
    study = sub.add_parser("study", help="studies beyond the paper: ablation ladder, retrieval, diagnostics")
    verbs = study.add_subparsers(dest="study", required=True, metavar="STUDY")
    for add in (
        _add_ablation,
        _add_recall,
        _add_scale,
        _add_convert,
        _add_lr,
        _add_phase_scale,
        _add_real_convert,
        _add_diagnose,
    ):
        add(verbs)


def _add_ablation(verbs: argparse._SubParsersAction) -> None:
    from tapa.study.ablation import LADDERS

    abl = _staged(
        verbs, "ablation", "which axis (tokenizer, head_dim, LR, tokens) explains TAPA's gap to RoPE", _ablation
    )
    abl.add_argument("--ladder", choices=list(LADDERS), default="default", help="which ladder of cells")


def _add_recall(verbs: argparse._SubParsersAction) -> None:
    from tapa.study.recall import STUDIES

    rec = _staged(
        verbs, "recall", "associative recall: train at L0, test at 1x..16x L0 (accuracy by depth)", _recall, cache=False
    )
    rec.add_argument("--study", choices=list(STUDIES), default="default", help="which recall study")
    rec.add_argument("--methods", nargs="+", metavar="METHOD", help="run only these of the study's methods")
    rec.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="run only these of the study's seeds")
    rec.add_argument("--jobs", type=int, default=1, help="train this many models at once (worker processes)")


def _add_scale(verbs: argparse._SubParsersAction) -> None:
    from tapa.study.scale import SCALES

    scale = _staged(verbs, "scale", "RoPE, TAPA and NoPE at 3 sizes: the L0 gap and extrapolation vs compute", _scale)
    scale.add_argument("--ladder", choices=list(SCALES), default="default", help="which size ladder")
    scale.add_argument(
        "--refit",
        action="store_true",
        help="recompute the trend and prediction interval of a finished --out, no training",
    )


def _add_convert(verbs: argparse._SubParsersAction) -> None:
    from tapa.study.convert import STUDIES

    conv = _staged(verbs, "convert", "RoPE -> TAPA conversion vs RoPE + YaRN, fine-tuned from one RoPE run", _convert)
    conv.add_argument("parent", metavar="RUN", help="a trained RoPE run (config, weights, tokenizer)")
    conv.add_argument("--study", choices=list(STUDIES), default="default", help="which conversion study")
    conv.add_argument(
        "--compare",
        nargs="*",
        default=[],
        metavar="RUN",
        help="other runs scored the same way (e.g. TAPA trained from scratch)",
    )


def _add_lr(verbs: argparse._SubParsersAction) -> None:
    from tapa.reproduce.presets import PRESETS

    lr = _staged(verbs, "lr", "peak-LR sweep of RoPE and TAPA at a reproduce preset's geometry", _lr)
    lr.add_argument("--preset", choices=list(PRESETS), default="paper-cpu", help="the geometry to sweep at")
    lr.add_argument("--grid", choices=("default", "smoke"), default="default", help="LR grid (smoke: 2 points each)")


def _add_phase_scale(verbs: argparse._SubParsersAction) -> None:
    from tapa.study.phase_scale import STUDIES

    ps = _staged(
        verbs,
        "phase-scale",
        "TAPA's phase scale s (2 pi, 1, off): LR sweep, seeds at each best LR, gap to RoPE",
        _phase_scale,
    )
    ps.add_argument("--study", choices=list(STUDIES), default="default", help="default: paper-cpu; smoke: toy")


def _add_real_convert(verbs: argparse._SubParsersAction) -> None:
    from tapa.study.real_model import STUDIES

    real = _staged(
        verbs,
        "real-convert",
        "a real RoPE model (GGUF, transformers folder or run) -> TAPA, continually pretrained",
        _real_convert,
    )
    real.add_argument("source", metavar="SOURCE", help="a .gguf file, a transformers folder or a tapa RoPE run")
    real.add_argument("--study", choices=list(STUDIES), default="default", help="default: 2K tokens; smoke: toy")
    real.add_argument("--train-minutes", type=float, help="minutes of training per arm (default: the study's)")


def _add_diagnose(verbs: argparse._SubParsersAction) -> None:
    diag = verbs.add_parser("diagnose", help="phase, distance dependence, previous-token and induction heads of runs")
    diag.add_argument("checkpoints", nargs="+", metavar="RUN", help="trained runs (each with its saved tokenizer)")
    diag.add_argument("--out", required=True, help="output folder for diagnostics.json and report.md")
    diag.add_argument("--segment-length", type=int, help="tokens per segment (default: each run's training length)")
    diag.add_argument("--segments", type=int, default=4, help="validation segments")
    diag.add_argument("--cache-dir", help="token cache directory")
    diag.set_defaults(func=_diagnose)


def _ablation(args: argparse.Namespace) -> None:
    from tapa.study.ablation import LADDERS, run_ladder

    results = run_ladder(LADDERS[args.ladder], args.out, args.cache_dir, verbose=not args.quiet)
    for row in results["rows"]:
        if "tapa_over_rope" in row:
            nope = row.get("nope_over_rope")
            print(f"{row['name']}: TAPA/RoPE {row['tapa_over_rope']:.3f}" + (f", NoPE/RoPE {nope:.3f}" if nope else ""))
    print(f"report: {args.out}/report.md, {args.out}/results.json")


def _recall(args: argparse.Namespace) -> None:
    import dataclasses

    from tapa.errors import ConfigError
    from tapa.study.recall import STUDIES, run_recall
    from tapa.study.recall_report import recall_table

    study = STUDIES[args.study]
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be at least 1")
    for name, chosen in (("methods", args.methods), ("seeds", args.seeds)):
        if chosen is None:
            continue
        unknown = [c for c in chosen if c not in getattr(study, name)]
        if unknown:
            allowed, bad = " ".join(map(str, getattr(study, name))), " ".join(map(str, unknown))
            raise ConfigError(f"--{name} {bad}: not in study {args.study!r} (choose from {allowed})")
        study = dataclasses.replace(study, **{name: tuple(chosen)})
    results = run_recall(study, args.out, verbose=not args.quiet, jobs=args.jobs)
    print(recall_table(results))
    print(f"report: {args.out}/report.md, {args.out}/results.json")


def _diagnose(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from tapa.study.diagnostics import diagnose_run, summary
    from tapa.study.diagnostics_report import diagnostics_table

    results = {run: diagnose_run(run, args.segments, args.segment_length, args.cache_dir) for run in args.checkpoints}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(results, indent=1) + "\n")
    table = diagnostics_table({run: summary(r) for run, r in results.items()})
    (out / "report.md").write_text("# Mechanism diagnostics\n\n" + table + "\n")
    print(table)
    print(f"report: {out}/report.md, {out}/diagnostics.json")


def _convert(args: argparse.Namespace) -> None:
    from tapa.study.convert import STUDIES, run_convert
    from tapa.study.convert_report import convert_table

    results = run_convert(
        STUDIES[args.study], args.parent, args.out, args.cache_dir, tuple(args.compare), verbose=not args.quiet
    )
    print(convert_table(results))
    print(f"report: {args.out}/report.md, {args.out}/results.json")


def _lr(args: argparse.Namespace) -> None:
    from tapa.reproduce.presets import get_preset
    from tapa.study.lr_sweep import GRIDS, SMOKE_GRIDS, lr_table, run_lr_sweep

    grids = SMOKE_GRIDS if args.grid == "smoke" else GRIDS
    results = run_lr_sweep(get_preset(args.preset), args.out, grids, args.cache_dir, verbose=not args.quiet)
    print(lr_table(results))
    print(f"report: {args.out}/report.md, {args.out}/results.json")


def _phase_scale(args: argparse.Namespace) -> None:
    from tapa.study.phase_scale import STUDIES, run_phase_scale
    from tapa.study.phase_scale_report import findings, seeded_table

    results = run_phase_scale(STUDIES[args.study], args.out, args.cache_dir, verbose=not args.quiet)
    print(seeded_table(results))
    print("\n".join(findings(results)))
    print(f"report: {args.out}/report.md, {args.out}/results.json")


def _real_convert(args: argparse.Namespace) -> None:
    import dataclasses
    from pathlib import Path

    from tapa.errors import ConfigError
    from tapa.study.real_model import STUDIES, check_source, run_real_model
    from tapa.study.real_model_report import perplexity_table, ratio_lines

    study = STUDIES[args.study]
    if args.train_minutes is not None:
        if not args.train_minutes > 0:
            raise ConfigError(f"--train-minutes {args.train_minutes}: must be > 0")
        study = dataclasses.replace(study, train_minutes=args.train_minutes)
    if not Path(args.source).exists():
        raise ConfigError(f"real-convert: no such file or folder {args.source}")
    check_source(args.source)
    results = run_real_model(study, args.source, args.out, args.cache_dir, verbose=not args.quiet)
    print(perplexity_table(results))
    print("\n".join(ratio_lines(results)))
    print(f"report: {args.out}/report.md, {args.out}/results.json")


def _scale(args: argparse.Namespace) -> None:
    from tapa.study.scale import SCALES, refit_scale, run_scale
    from tapa.study.scale_report import scale_table, trend_text

    if args.refit:
        results = refit_scale(args.out)
    else:
        results = run_scale(SCALES[args.ladder], args.out, args.cache_dir, verbose=not args.quiet, name=args.ladder)
    print(scale_table(results))
    print(trend_text(results))
    print(f"report: {args.out}/report.md, {args.out}/results.json")
