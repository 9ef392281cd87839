"""The scale ladder's report: a table per size, the fitted trend, a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapa.reproduce.stages import finished_seconds

STYLES = ("-", "--", ":")
MARKERS = ("o", "s", "^")


def scale_table(results: dict[str, Any]) -> str:
    ladder = results["ladder"]
    factors = ladder["length_factors"][1:]
    l0 = ladder["seq_len"]
    head = " | ".join(f"{m} {f}x/1x" for f in factors for m in ("RoPE", "TAPA", "NoPE"))
    lines = [f"| size | non-embedding params | tokens | compute (FLOPs) | RoPE ppl at L0 | **TAPA/RoPE at L0** | "
             f"NoPE/RoPE at L0 | {head} |", "|---|---|---|---|---|---|---|" + "---|" * (3 * len(factors))]  # fmt: skip
    for r in results.get("rows", []):
        ext = " | ".join(f"{r['extrapolation'][m][str(l0 * f)]:.2f}" for f in factors for m in ("rope", "tapa", "nope"))
        lines.append(f"| {r['size']} | {r['non_embedding_params'] / 1e6:.2f}M | {r['tokens'] / 1e6:.2f}M | "
                     f"{r['compute']:.2e} | {r['perplexity']['rope'][str(l0)]:.2f} | **{r['tapa_over_rope']:.3f}** | "
                     f"{r['nope_over_rope']:.3f} | {ext} |")  # fmt: skip
    return "\n".join(lines)


def trend_text(results: dict[str, Any]) -> str:
    fit, pred = results.get("fit"), results.get("prediction")
    if not fit or not pred:
        return "Fewer than two sizes finished: no trend."
    text = (f"Fit over {len(results['rows'])} sizes: log(TAPA/RoPE) = {fit['intercept']:.3f} + {fit['slope']:.3f} "
            f"x log10(compute), slope standard error {fit['slope_se']:.3f}. ")  # fmt: skip
    text += (f"Taken at face value at the paper's compute ({results['paper_compute']:.1e} FLOPs) it gives a ratio of "
             f"{pred['ratio']:.3f}")  # fmt: skip
    if "ratio_low" in pred:
        text += (f" with a 95% prediction interval of {pred['ratio_low']:.2f} to {pred['ratio_high']:.3g} (t with "
                 f"{pred['df']} residual degree(s) of freedom)")  # fmt: skip
    text += (". This is an extrapolation over many orders of magnitude from a handful of small models, one seed "
             "per size: a hint of direction at most, not a forecast; an interval that contains 1 does not rule "
             "out parity.")  # fmt: skip
    return text


def plot_scale(results: dict[str, Any], path: Path) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()

    rows = results.get("rows", [])
    ladder = results["ladder"]
    l0 = ladder["seq_len"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r["compute"] for r in rows]
    left.plot(xs, [r["tapa_over_rope"] for r in rows], ls="-", marker="o", label="TAPA / RoPE")
    left.plot(xs, [r["nope_over_rope"] for r in rows], ls="--", marker="s", label="NoPE / RoPE")
    left.axhline(1.0, color="grey", lw=0.8, ls=":", label="parity")
    left.set_ylabel("perplexity ratio at L0")
    for i, method in enumerate(("rope", "tapa", "nope")):
        for j, f in enumerate(ladder["length_factors"][1:]):
            right.plot(xs, [r["extrapolation"][method][str(l0 * f)] for r in rows], ls=STYLES[j % 3],
                       marker=MARKERS[i], label=f"{method} {f}x / 1x")  # fmt: skip
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


def write_scale_report(results: dict[str, Any], out: Path) -> None:
    ladder = results["ladder"]
    (out / "figures").mkdir(exist_ok=True)
    plot_scale(results, out / "figures" / "scale.png")
    sizes = "; ".join(f"{s['name']}: d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads, "
                      f"{s['steps']} steps" for s in ladder["sizes"])  # fmt: skip
    text = [
        "# Scale ladder: RoPE, TAPA and NoPE as the models grow",
        "",
        f"Sizes ({ladder['tokenizer']} tokens, head_dim {ladder['head_dim']}, L0 = {ladder['seq_len']}, batch "
        f"{ladder['batch_size']}, seed {ladder['seed']}): {sizes}. Perplexity on the first {ladder['eval_tokens']:,} "
        "tokens of the test book, sliding windows (stride = window/4).",
        "",
        scale_table(results),
        "",
        trend_text(results),
        "",
        "![L0 gap and extrapolation ratios against compute](figures/scale.png)",
        "",
        "*Figure: left, perplexity ratio to RoPE at the training length against training compute (log scale); "
        "right, each method's perplexity at 8x and 16x L0 divided by its own at L0.*",
        "",
        f"Compute: {finished_seconds(out) / 60:.1f} min of stages in all (this invocation "
        f"{results.get('wall_seconds', 0) / 60:.1f} min; finished stages are reused, not re-run).",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
