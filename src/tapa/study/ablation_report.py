"""The ablation ladder's report: one table, a row per cell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapa.experiment.stages import finished_seconds


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def ablation_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| cell | tokens | head_dim x heads | steps | TAPA LR | TAPA alpha | RoPE ppl | TAPA ppl | NoPE ppl "
        "| **TAPA/RoPE** | NoPE/RoPE | bits/byte RoPE / TAPA / NoPE | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "rope" not in row:
            continue
        ppl = {m: (2.718281828459045 ** row[m]["val_loss"] if m in row else None) for m in ("rope", "tapa", "nope")}
        bpb = " / ".join(_fmt(row[m]["val_bpb"], ".3f") if m in row else "-" for m in ("rope", "tapa", "nope"))
        tapa_lr = _fmt(row["tapa"]["lr"], ".0e") if "tapa" in row else "-"
        seeds = len(row["tapa"]["seeds"]) if "tapa" in row else len(row["rope"]["seeds"])
        width = f"{row['head_dim']} x {row['n_heads']}"
        lines.append(
            f"| {row['name']} | {row['tokenizer']} | {width} | {row['steps']} "
            f"| {tapa_lr} | {row.get('alpha', 0.1):g} "
            f"| {_fmt(ppl['rope'], '.2f')} | {_fmt(ppl['tapa'], '.2f')} | {_fmt(ppl['nope'], '.2f')} "
            f"| **{_fmt(row.get('tapa_over_rope'))}** | {_fmt(row.get('nope_over_rope'))} | {bpb} | {seeds} |"
        )
    return "\n".join(lines)


def mechanism_table(results: dict[str, Any]) -> str:
    from tapa.study.diagnostics_report import diagnostics_table

    summaries = {
        f"{cell} {method}": d["summary"]
        for cell, methods in results.get("diagnostics", {}).items()
        for method, d in methods.items()
    }
    return diagnostics_table(summaries)


def formation_table(results: dict[str, Any]) -> str:
    """Best previous-token head (max over layers and heads) at each kept checkpoint, per cell and method."""
    lines = ["| cell | method | best previous-token score by training step |", "|---|---|---|"]
    for cell, methods in results.get("diagnostics", {}).items():
        for method, d in methods.items():
            steps = d.get("checkpoints", {})
            cells = ", ".join(f"{step}: {max(s['previous_token']):.2f}" for step, s in steps.items())
            lines.append(f"| {cell} | {method} | {cells or '-'} |")
    return "\n".join(lines)


def write_ablation_report(results: dict[str, Any], out: Path) -> None:
    from tapa.study.diagnostics_report import plot_phase_and_mass

    ladder = results["ladder"]
    diagnostics = results.get("diagnostics", {})
    figures = []
    if diagnostics:
        (out / "figures").mkdir(exist_ok=True)
        for cell, methods in diagnostics.items():
            name = f"figures/diagnostics_{cell}.png"
            full = {method: d["full"] for method, d in methods.items()}
            plot_phase_and_mass(full, out / name, f"cell {cell}: seed {ladder['seeds'][0]} models")
            figures += [
                f"![diagnostics of cell {cell}]({name})",
                "",
                f"*Figure: cell {cell}. Left: TAPA's median abs(phase) against distance, one line per layer "
                "(flat lines: the phase hardly changes with distance). Right: attention mass on the last d "
                "tokens for the most local head of the last layer, per method; dotted: uniform attention "
                "over the history.*",
                "",
            ]
    text = [
        "# Ablation ladder: why does TAPA lag RoPE at the training length?",
        "",
        f"Models: d_model {ladder['d_model']}, {ladder['n_layers']} layers, L0 = {ladder['seq_len']} tokens, "
        f"batch {ladder['batch_size']}; validation perplexity at L0 on the validation book "
        f"({ladder['eval_segments']} segments), per token of each cell's tokenizer (BPE vocabulary "
        f"{results['bpe_vocab']}). Ratios are exp(loss - RoPE's loss) in the same cell; > 1 is worse than RoPE. "
        "Bits per byte compare across tokenizers.",
        "",
        ablation_table(results["rows"]),
        "",
        "Learning-rate rules: " + "; ".join(f"`{k}`: {v}" for k, v in results["lr_rules"].items()) + ".",
        "",
        "## Mechanism diagnostics (seed-0 models, validation text at L0)",
        "",
        "Per layer (layer 0 first, separated by '/'): the best head's mean attention on the previous token, the best "
        "head's induction score (attention to the token after the earlier occurrence in a repeated random sequence), "
        "the most local head's mass on the previous token, the share of each head's score variance explained by "
        "distance alone (eta^2, mean over heads), and for TAPA the median abs(phase) and mean cos(phase) at distance "
        "1 and the share of the cosine's variance explained by distance.",
        "",
        mechanism_table(results),
        "",
        "How the previous-token pattern forms over training (the last three checkpoints of each run):",
        "",
        formation_table(results),
        "",
        *figures,
        f"Compute: {finished_seconds(out) / 60:.1f} min of stages in all (this invocation "
        f"{results.get('wall_seconds', 0) / 60:.1f} min; finished stages are reused, not re-run).",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))
