"""The conversion study's report: steps to within 5% of the parent at L0, perplexity to
16 x L0, and the L0 curve over fine-tuning steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapa.experiment.stages import finished_seconds

LABELS = {
    "tapa": "RoPE -> TAPA (converted)",
    "rope_yarn": "RoPE + YaRN",
    "tapa_rope_lr": "RoPE -> TAPA (converted), at YaRN's LR",
}


def _within(step: int | None, steps: int) -> str:
    return str(step) if step is not None else f"not within {steps}"


def convert_table(results: dict[str, Any]) -> str:
    l0, steps = results["l0"], results["study"]["steps"]
    lengths = list(results["parent_eval"]["lengths"])
    head = " | ".join(f"ppl {int(n) // l0}x L0" for n in lengths)
    lines = [
        f"| model | peak LR | steps to L0 loss <= 1.05x parent | steps to L0 ppl <= 1.05x parent | {head} |",
        "|---|---|---|---|" + "---|" * len(lengths),
    ]

    def ppl_cells(evaluation: dict[str, Any]) -> str:
        return " | ".join(f"{evaluation['lengths'][n]['perplexity']:.2f}" for n in lengths)

    lines.append(f"| parent (RoPE, before fine-tuning) | - | - | - | {ppl_cells(results['parent_eval'])} |")
    for name, child in results["children"].items():
        within = child["within"]
        lines.append(
            f"| {LABELS.get(name, name)}, {steps} steps | {child['lr']:.1e} | "
            f"{_within(within['loss'], steps)} | {_within(within['perplexity'], steps)} | "
            f"{ppl_cells(child['final'])} |"
        )
    for label, evaluation in results.get("compare", {}).items():
        lines.append(f"| {label} (for comparison) | - | - | - | {ppl_cells(evaluation)} |")
    return "\n".join(lines)


def curve_table(results: dict[str, Any]) -> str:
    names = list(results["children"])
    parent = results["parent_eval"]["lengths"][str(results["l0"])]
    lines = [
        "| step | " + " | ".join(f"{LABELS.get(n, n)} L0 ppl (loss ratio)" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    curves = {n: {p["step"]: p for p in results["children"][n]["curve"]} for n in names}
    for step in sorted(set().union(*[set(c) for c in curves.values()])):
        cells = []
        for n in names:
            p = curves[n].get(step)
            cells.append(f"{p['perplexity']:.2f} ({p['loss'] / parent['loss']:.3f})" if p else "-")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_convert(results: dict[str, Any], path: Path) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()

    parent = results["parent_eval"]["lengths"]
    l0 = results["l0"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (name, child), style, marker in zip(
        results["children"].items(), ("-", "--", "-."), ("o", "s", "D"), strict=False
    ):
        curve = child["curve"]
        left.plot(
            [p["step"] for p in curve],
            [p["perplexity"] for p in curve],
            ls=style,
            marker=marker,
            label=LABELS.get(name, name),
        )
        final = child["final"]["lengths"]
        right.plot(
            [int(n) // l0 for n in final],
            [final[n]["perplexity"] for n in final],
            ls=style,
            marker=marker,
            label=LABELS.get(name, name),
        )
    left.axhline(parent[str(l0)]["perplexity"], color="grey", ls=":", label="parent at L0")
    left.axhline(1.05 * parent[str(l0)]["perplexity"], color="grey", ls="-.", lw=0.8, label="parent x 1.05")
    right.plot(
        [int(n) // l0 for n in parent],
        [parent[n]["perplexity"] for n in parent],
        ls=":",
        marker="^",
        color="grey",
        label="parent (no fine-tuning)",
    )
    for label, evaluation in results.get("compare", {}).items():
        ev = evaluation["lengths"]
        right.plot([int(n) // l0 for n in ev], [ev[n]["perplexity"] for n in ev], ls="-.", marker="x", label=label)
    left.set_xlabel("fine-tuning steps")
    left.set_ylabel(f"test perplexity at L0 = {l0} tokens (log scale)")
    left.set_yscale("log")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xticks([int(n) // l0 for n in parent], [f"{int(n) // l0}x" for n in parent])
    right.set_xlabel("evaluation length / L0 (log scale)")
    right.set_ylabel("test perplexity (log scale)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_convert_report(results: dict[str, Any], out: Path) -> None:
    study = results["study"]
    (out / "figures").mkdir(exist_ok=True)
    plot_convert(results, out / "figures" / "convert.png")
    l0 = results["l0"]
    md = [
        "# RoPE -> TAPA conversion",
        "",
        f"Parent: `{results['parent']}` (RoPE, L0 = {l0} tokens). Both children fine-tune from it on the same "
        f"data for {study['steps']} steps at {study['length_factor']} x L0, batch {study['batch_size']}, seed "
        f"{study['seed']}, at the library's fine-tuning LR for its scheme (0.2 x the pretraining default) unless the "
        f"row says otherwise; YaRN factor {study['yarn_factor']:g}. "
        f"Perplexity on the test book ({study['eval_tokens']} tokens, sliding windows, stride = window / 4).",
        "",
        convert_table(results),
        "",
        "'Within 5%' two ways: the L0 loss (nats per token) at most 1.05 x the parent's, and the L0 perplexity "
        "at most 1.05 x the parent's; steps are checkpoint steps (a checkpoint every "
        f"{study['save_every']} steps), so the true step lies at or before the one given.",
        "",
        "## The L0 curve over fine-tuning",
        "",
        curve_table(results),
        "",
        "![conversion](figures/convert.png)",
        "",
        "*Figure: left, test perplexity at L0 over fine-tuning steps (step 0 = the converted or YaRN-scaled "
        "parent before any update), with the parent's level and 1.05 x it; right, perplexity of the final "
        "models from L0 to 16 x L0, beside the parent's.*",
        "",
        f"Stages: {finished_seconds(out) / 60:.1f} min in all; this call {results['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    (out / "report.md").write_text("\n".join(md))
