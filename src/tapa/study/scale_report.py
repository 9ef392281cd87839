"""The scale ladder's report: a table per size, the fitted trend, a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapa.experiment.stages import finished_seconds
from tapa.utils.stats import interval_text

STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^")
NAMES = {"rope": "RoPE", "tapa": "TAPA", "nope": "NoPE"}


def _methods(results: dict[str, Any]) -> list[str]:
    return list(results["ladder"].get("methods", ("rope", "tapa", "nope")))


def _seeds(ladder: dict[str, Any]) -> list[int]:
    return list(ladder.get("seeds", [ladder.get("seed", 0)]))


def _ratio(row: dict[str, Any], method: str) -> str:
    interval = row.get(f"{method}_over_rope_interval")
    return interval_text(interval) if interval else f"{row[f'{method}_over_rope']:.3f} (1 seed)"


def scale_table(results: dict[str, Any]) -> str:
    ladder = results["ladder"]
    methods = _methods(results)
    others = [m for m in methods if m != "rope"]
    factors = ladder["length_factors"][1:]
    l0 = ladder["seq_len"]
    head = " | ".join(f"{NAMES[m]} {f}x/1x" for f in factors for m in methods)
    ratios = " | ".join(f"**{NAMES[m]}/RoPE at L0**" for m in others)
    grads = all("late_grad_norm" in r for r in results.get("rows", []))
    grad_head = " | late max grad norm " + " / ".join(NAMES[m] for m in methods) if grads else ""
    lines = [
        "| size | seeds | non-embedding params | tokens | compute (FLOPs) | RoPE ppl at L0 | "
        f"{ratios} | {head}{grad_head} |",
        "|---|---|---|---|---|---|" + "---|" * (len(others) + len(methods) * len(factors) + int(grads)),
    ]
    for r in results.get("rows", []):
        ext = " | ".join(f"{r['extrapolation'][m][str(l0 * f)]:.2f}" for f in factors for m in methods)
        cells = " | ".join(f"**{_ratio(r, m)}**" for m in others)
        seeds = len(r.get("seeds", [0]))
        lines.append(
            f"| {r['size']} | {seeds} | {r['non_embedding_params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.2f}M | "
            f"{r['compute']:.2e} | {r['perplexity']['rope'][str(l0)]:.2f} | {cells} | {ext} |"
            + (" " + " / ".join(f"{r['late_grad_norm'][m]:.1f}" for m in methods) + " |" if grads else "")
        )
    return "\n".join(lines)


def by_length_table(results: dict[str, Any]) -> str:
    """TAPA/RoPE (and NoPE/RoPE) perplexity at every evaluated length, paired by seed."""
    others = [m for m in _methods(results) if m != "rope"]
    rows = [r for r in results.get("rows", []) if all(f"{m}_over_rope_by_length" in r for m in others)]
    if not rows:
        return ""
    lengths = list(rows[0][f"{others[0]}_over_rope_by_length"])
    lines = [
        "| size | ratio | " + " | ".join(f"at {n} tokens" for n in lengths) + " |",
        "|---|---|" + "---|" * len(lengths),
    ]
    for r in rows:
        for m in others:
            cells = " | ".join(interval_text(r[f"{m}_over_rope_by_length"][n]) for n in lengths)
            lines.append(f"| {r['size']} | {NAMES[m]}/RoPE | {cells} |")
    return "\n".join(lines)


def trend_text(results: dict[str, Any]) -> str:
    fit, pred = results.get("fit"), results.get("prediction")
    if not fit or not pred:
        return "Fewer than two sizes finished: no trend."
    points = fit.get("n", len(results["rows"]))
    text = (
        f"Fit over {len(results['rows'])} sizes ({points} points, one per size and seed): log(TAPA/RoPE) = "
        f"{fit['intercept']:.3f} + {fit['slope']:.3f} x log10(compute), slope standard error "
        f"{fit['slope_se']:.3f}"
    )
    if "slope_low" in fit and fit["slope_low"] == fit["slope_low"]:
        text += f" (95% interval {fit['slope_low']:.3f} to {fit['slope_high']:.3f})"
    text += (
        f". Taken at face value at the paper's compute ({results['paper_compute']:.1e} FLOPs) it gives a ratio "
        f"of {pred['ratio']:.3f}"
    )
    if "ratio_low" in pred:
        text += (
            f" with a 95% prediction interval of {pred['ratio_low']:.2f} to {pred['ratio_high']:.3g} (t with "
            f"{pred['df']} residual degree(s) of freedom)"
        )
    n_seeds = len(_seeds(results["ladder"]))
    seeds = "one seed per size" if n_seeds == 1 else f"{n_seeds} seeds per size"
    text += (
        f". This is an extrapolation over many orders of magnitude from a handful of small models, {seeds}: a "
        "hint of direction at most, not a forecast; an interval that contains 1 does not rule out parity, "
        "and a slope interval that contains 0 does not show a trend."
    )
    return text


def plot_scale(results: dict[str, Any], path: Path) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()

    rows = results.get("rows", [])
    ladder = results["ladder"]
    methods = _methods(results)
    l0 = ladder["seq_len"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r["compute"] for r in rows]
    for i, method in enumerate(m for m in methods if m != "rope"):
        key = f"{method}_over_rope"
        left.plot(xs, [r[key] for r in rows], ls=STYLES[i], marker=MARKERS[i], label=f"{NAMES[method]} / RoPE")
        for r in rows:  # every seed's ratio, when there are several
            seeds = r.get(f"{key}_interval", {}).get("ratios", {})
            if len(seeds) > 1:
                left.scatter([r["compute"]] * len(seeds), list(seeds.values()), s=12, alpha=0.5, marker=MARKERS[i])
    left.axhline(1.0, color="grey", lw=0.8, ls=":", label="parity")
    left.set_ylabel("perplexity ratio at L0 (line: paired mean; dots: seeds)")
    for i, method in enumerate(methods):
        for j, f in enumerate(ladder["length_factors"][1:]):
            right.plot(
                xs,
                [r["extrapolation"][method][str(l0 * f)] for r in rows],
                ls=STYLES[j % 4],
                marker=MARKERS[i],
                label=f"{method} {f}x / 1x",
            )
    right.set_yscale("log")
    right.set_ylabel("perplexity at k x L0 / at L0 (log scale)")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("training compute, 6 N T FLOPs (log scale)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _provenance(results: dict[str, Any]) -> str:
    """The command, date and machine of the run, where results.json records them."""
    env = results.get("environment")
    if not results.get("command") or not env:
        return ""
    return (
        f"Command: `{results['command']}` ({results['date']}; {env['processor'] or env['machine']}, "
        f"{env['threads']} threads, torch {env['torch']}). "
    )


def write_scale_report(results: dict[str, Any], out: Path) -> None:
    ladder = results["ladder"]
    (out / "figures").mkdir(exist_ok=True)
    plot_scale(results, out / "figures" / "scale.png")
    sizes = "; ".join(
        f"{s['name']}: d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads, {s['steps']} steps"
        for s in ladder["sizes"]
    )
    seeds = ", ".join(str(s) for s in _seeds(ladder))
    lrs = ", ".join(f"{NAMES[m]} {lr:g}" for m, lr in ladder.get("lr", ()))
    lrs = f"the library defaults, except {lrs}" if lrs else "the library defaults"
    scale = ladder.get("tapa_phase_scale")
    names = ", ".join(NAMES[m] for m in _methods(results))
    text = [
        f"# Scale ladder: {names} as the models grow",
        "",
        f"Sizes ({ladder['tokenizer']} tokens, head_dim {ladder['head_dim']}, L0 = {ladder['seq_len']}, batch "
        f"{ladder['batch_size']}, seed(s) {seeds}): {sizes}. Peak LRs: {lrs}. TAPA's "
        f"phase scale: {'2 pi (the paper)' if not scale else f'{scale:g}'}. Perplexity on the first "
        f"{ladder['eval_tokens']:,} tokens of the test book, sliding windows (stride = window/4). Ratios at L0 are "
        "paired by seed (mean of the per-seed log ratios, 95% t-interval); other columns are geometric means over "
        "the seeds.",
        "",
        scale_table(results),
        "",
        "Ratios to RoPE at every length, paired by seed (95% t-intervals):",
        "",
        by_length_table(results),
        "",
        trend_text(results),
        "",
        "![L0 gap and extrapolation ratios against compute](figures/scale.png)",
        "",
        "*Figure: left, perplexity ratio to RoPE at the training length against training compute (log scale); "
        "right, each method's perplexity at k x L0 divided by its own at L0. Late max grad norm: the largest "
        "pre-clipping gradient norm in the second half of training, over the seeds (clipped to 1 in training; "
        "a rise to 10-10^4 marked the unstable runs of the earlier ladder).*",
        "",
        _provenance(results),
        f"Compute: {results.get('stage_seconds', finished_seconds(out)) / 60:.1f} min of stages in all (this "
        "invocation "
        f"{results.get('wall_seconds', 0) / 60:.1f} min; finished stages are reused, not re-run).",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
