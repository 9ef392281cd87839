"""report.md and the figure of ``tapa study phase-scale`` (numbers from its results.json only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapa.reproduce.presets import Preset
from tapa.utils.report import markdown_table, pyplot
from tapa.utils.stats import interval_text

METHOD_LABELS = {
    "rope": "RoPE",
    "tapa": "TAPA, s = 2 pi (paper)",
    "tapa_unscaled": "TAPA, s = 1 (public code)",
    "tapa_phase_off": "TAPA, phase off (s = 0)",
    "nope": "NoPE",
}


def ratio_reading(ratio: dict[str, Any]) -> str:
    """How a paired ratio reads: above / below 1, or not distinguishable from 1 at its level."""
    if ratio.get("low") is None:
        return "one seed: no interval"
    if ratio["low"] > 1:
        return "higher (interval above 1)"
    if ratio["high"] < 1:
        return "lower (interval below 1)"
    return "not distinguishable from 1 (interval contains 1)"


def _label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def sweep_table(results: dict[str, Any]) -> str:
    lrs = sorted({r["lr"] for rows in results["sweep"].values() for r in rows.values()})
    rows = []
    for method, sweep in results["sweep"].items():
        by_lr = {r["lr"]: r for r in sweep.values()}
        cells = [
            f"**{by_lr[lr]['val_ppl']:.1f}**"
            if lr == results["best_lr"][method]
            else (f"{by_lr[lr]['val_ppl']:.1f}" if lr in by_lr else "")
            for lr in lrs
        ]
        rows.append([_label(method), *cells])
    return markdown_table(["method", *(f"LR {lr:g}" for lr in lrs)], rows)


def by_lr_table(results: dict[str, Any]) -> str:
    """Every shortlisted LR of every method on all seeds: the per-seed values show divergences."""
    rows = []
    for method, by_lr in results["summary"].get("by_lr", {}).items():
        for lr, m in sorted(by_lr.items(), key=lambda kv: float(kv[0])):
            per_seed = ", ".join(f"{v:.1f}" for v in m["per_seed"].values())
            interval = f"{m['low']:.1f}-{m['high']:.1f}" if m["low"] is not None else "(1 seed)"
            chosen = "**chosen**" if float(lr) == results["best_lr"][method] else ""
            rows.append([_label(method), lr, per_seed, f"{m['val_ppl']:.1f}", interval, chosen])
    return markdown_table(["method", "peak LR", "per seed", "mean", "95% interval", ""], rows)


def seeded_table(results: dict[str, Any]) -> str:
    summary = results["summary"]
    rows = []
    for method, m in summary["methods"].items():
        per_seed = ", ".join(f"{v:.1f}" for v in m["per_seed"].values())
        interval = f"{m['low']:.1f}-{m['high']:.1f}" if m["low"] is not None else "(1 seed)"
        ratio = summary["ratios"].get(f"{method}/rope")
        rows.append(
            [
                _label(method),
                f"{m['lr']:g}",
                per_seed,
                f"{m['val_ppl']:.1f}",
                interval,
                interval_text(ratio) if ratio else "1 (reference)",
            ]
        )
    pct = round(100 * next(iter(summary["methods"].values()))["level"])
    return markdown_table(
        ["method", "LR (best seed mean)", "per seed", "mean", f"{pct}% interval", "/ RoPE, paired by seed"], rows
    )


def length_table(results: dict[str, Any], preset: Preset) -> str:
    if not results.get("perplexity"):
        return "(not evaluated in this study)"
    lengths = [str(n) for n in preset.eval_lengths]
    rows = []
    for method, by_seed in results["perplexity"].items():
        means = [sum(s[n] for s in by_seed.values()) / len(by_seed) for n in lengths]
        rows.append([_label(method), *(f"{v:.1f}" for v in means)])
    return markdown_table(["method (mean over seeds)", *lengths], rows)


def findings(results: dict[str, Any]) -> list[str]:
    """Sentences derived from the numbers by fixed rules (intervals, not point values)."""
    best, summary = results["best_lr"], results["summary"]
    ratios, lines = summary["ratios"], []
    if "tapa" in best and "tapa_unscaled" in best:
        moved = "moves up" if best["tapa_unscaled"] > best["tapa"] else "does not move up"
        lines.append(
            f"- The LR chosen by the seed mean {moved}: TAPA with s = 2 pi at {best['tapa']:g}, with s = 1 "
            f"at {best['tapa_unscaled']:g}."
        )
        for method in ("tapa", "tapa_unscaled", "rope"):
            for lr, m in results["summary"].get("by_lr", {}).get(method, {}).items():
                worst = max(m["per_seed"].values())
                if worst > 2 * min(m["per_seed"].values()):
                    lines.append(
                        f"- {_label(method)} at LR {lr} diverged on a seed (perplexity {worst:.1f} against "
                        f"{min(m['per_seed'].values()):.1f} on the best seed)."
                    )
        sweep2pi = {r["lr"]: r["val_ppl"] for r in results["sweep"]["tapa"].values()}
        sweep1 = {r["lr"]: r["val_ppl"] for r in results["sweep"]["tapa_unscaled"].values()}
        shared = sorted(set(sweep2pi) & set(sweep1))
        if shared:
            pairs = "; ".join(f"{lr:g}: {sweep2pi[lr]:.1f} vs {sweep1[lr]:.1f}" for lr in shared)
            lines.append(f"- Same LR, s = 2 pi vs s = 1 (seed 0 validation perplexity): {pairs}.")
    for key in ("tapa/rope", "tapa_unscaled/rope", "tapa_phase_off/rope", "nope/rope"):
        if key in ratios:
            a = key.split("/")[0]
            lines.append(
                f"- {_label(a)} / RoPE at each one's best LR: {interval_text(ratios[key])}: "
                f"{ratio_reading(ratios[key])}."
            )
    for key, what in (
        ("tapa/tapa_unscaled", "s = 2 pi vs s = 1"),
        ("tapa_unscaled/tapa_phase_off", "s = 1 vs the phase switched off"),
        ("tapa/tapa_phase_off", "s = 2 pi vs the phase switched off"),
    ):
        if key in ratios:
            lines.append(f"- {what}: {interval_text(ratios[key])}: {ratio_reading(ratios[key])}.")
    return lines


def write_report(results: dict[str, Any], preset: Preset, out: Path) -> None:
    seeds = ", ".join(map(str, results["seeds"]))
    text = [
        f"# Phase scale: TAPA with s = 2 pi, s = 1 and the phase off (`{preset.name}` geometry)",
        "",
        "TAPA's score is (q_A.k_A / sqrt(D_A)) cos(s |m-n|^alpha q_P.k_P / sqrt(D_P)). The paper's Eq. 12 has "
        "s = 2 pi; the public forward-only code has s = 1; s = 0 switches the phase off (cos = 1: NoPE on the "
        "amplitude half of each head, the phase half unused by the scores).",
        "",
        f"Every run is `tapa reproduce --preset {preset.name}`'s pretraining stage of its method "
        f"({preset.pretrain_steps} steps of {preset.batch_size} x {preset.seq_len} tokens, d_model {preset.d_model}, "
        f"{preset.n_layers} layers, head_dim {preset.head_dim or preset.d_model // preset.n_heads}), read by the "
        "validation book's perplexity (never the test book).",
        "",
        "## 1. Peak-LR sweep (seed 0, validation perplexity; best in bold)",
        "",
        sweep_table(results),
        "",
        f"## 2. The two best seed-0 LRs of each method on seeds {seeds}",
        "",
        by_lr_table(results),
        "",
        "## 3. Each method at the LR with the best seed mean",
        "",
        seeded_table(results),
        "",
        "Intervals: Student t over seeds of the mean validation loss (exponentiated); ratios are paired by seed "
        "(t-interval of the per-seed loss differences). Seed 0 shortlisted the LRs and counts in the mean, so a "
        "method swept over more LRs is slightly favoured.",
        "",
        "## Findings (derived from the numbers above by fixed rules)",
        "",
        *findings(results),
        "",
        f"## 4. Test-book perplexity by evaluation length, chosen LRs (trained at {preset.seq_len} tokens)",
        "",
        length_table(results, preset),
        "",
        "![validation perplexity by peak LR](phase_scale.png)",
        "",
        f"Command: `tapa study phase-scale --study {results['study']} --out DIR`. Machine: "
        f"{results['environment']['processor'] or results['environment']['machine']}, "
        f"{results['environment']['threads']} threads, torch {results['environment']['torch']}. "
        f"Training time of all stages: {results['stage_seconds'] / 60:.1f} min.",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))


def plot_phase_scale(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, sweep in results["sweep"].items():
        pts = sorted((r["lr"], r["val_ppl"]) for r in sweep.values())
        (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=_label(method))
        m = results["summary"]["methods"][method]
        if m["low"] is not None:
            ax.errorbar(
                [m["lr"]],
                [m["val_ppl"]],
                yerr=[[m["val_ppl"] - m["low"]], [m["high"] - m["val_ppl"]]],
                color=line.get_color(),
                capsize=4,
                marker="s",
                markersize=7,
                alpha=0.6,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("peak LR")
    ax.set_ylabel("validation perplexity")
    ax.set_title("lines: the seed-0 sweep; squares: mean over seeds at the chosen LR (95% interval)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
