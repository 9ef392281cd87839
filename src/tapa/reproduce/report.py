"""report.md, a self-contained report.html (figures embedded) from results.json."""

from __future__ import annotations

import base64
import html
import json
import statistics
from pathlib import Path
from typing import Any

from tapa.evaluate.passkey import KEY_DIGITS, N_CANDIDATES
from tapa.paper import PAPER_LENGTHS_1, PAPER_LENGTHS_2, PAPER_STATS, PAPER_TABLE_1, PAPER_TABLE_2

FIGURE_CAPTIONS = {
    "perplexity_by_length": "perplexity against evaluation length (both axes log scale), mean over seeds; left "
    "pretrained at L0 without fine-tuning (the paper's Table 2), right after fine-tuning at 4 x L0 (Table 1). "
    "Dashed line: L0; dotted: the fine-tuning length. Methods with equal values overlap; line styles and markers "
    "tell them apart.",
    "bias": "distribution over sampled query/key pairs of the near-minus-far score difference of the pretrained "
    "RoPE and TAPA models (Appendix I); RoPE's should sit right of zero, TAPA's around it.",
    "positions": "loss by position inside windows longer than L0 (pretrained models): where each method starts "
    "to fail past its training length.",
}


def _caption(stem: str) -> str:
    if stem.startswith("passkey_"):
        method, seed = stem.removeprefix("passkey_").rsplit("_s", 1)
        return f"passkey accuracy of {method} (seed {seed}) by context length and depth of the key."
    return FIGURE_CAPTIONS.get(stem, stem)


def _tokens(p: dict) -> str:
    return (
        f"BPE tokens (vocabulary {p['bpe_vocab']}, trained on the training books)"
        if p.get("tokenizer") == "bpe"
        else "byte-level tokens"
    )


def _unit(p: dict) -> str:
    return "BPE token" if p.get("tokenizer") == "bpe" else "byte"


def _cell(seeds: dict, length: int) -> str:
    values = [s["lengths"][str(length)]["perplexity"] for s in seeds.values() if str(length) in s["lengths"]]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def _ppl_table(table: dict, lengths: list[int], train_len: int) -> list[str]:
    head = "| method | " + " | ".join(f"{n} ({n / train_len:g}x)" for n in lengths) + " |"
    lines = [head, "|---" * (len(lengths) + 1) + "|"]
    for method, seeds in table.items():
        lines.append(f"| {method} | " + " | ".join(_cell(seeds, n) for n in lengths) + " |")
    return lines


def _paper(table: dict, lengths: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join(f"{v:g}" for v in row) + " |" for m, row in table.items()]
    return lines


def _mib(stage_result: dict) -> str:
    peak = stage_result.get("peak_memory_mib")
    return f"{peak:.0f}" if peak else "-"


def _cost(results: dict) -> list[str]:
    lines = [
        "| stage | method | seed | wall s | peak memory MiB | tokens/s | val bits/byte |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in ("pretrain", "finetune"):
        for method, seeds in results[stage].items():
            for seed, r in seeds.items():
                lines.append(
                    f"| {stage} | {method} | {seed} | {r['seconds']:.1f} | {_mib(r)} | "
                    f"{r['tokens_per_second']:,.0f} | {r['val_bpb']:.3f} |"
                )
    lines += [
        "",
        "| evaluation | method | seed | wall s, all lengths | s at the longest | peak memory MiB |",
        "|---|---|---|---|---|---|",
    ]
    for stage in ("zero_shot", "finetuned"):
        for method, seeds in results[stage].items():
            for seed, r in seeds.items():
                longest = r["lengths"][max(r["lengths"], key=int)]["seconds"] if r["lengths"] else float("nan")
                label = stage.replace("_", "-")
                lines.append(f"| {label} | {method} | {seed} | {r['seconds']:.1f} | {longest:.1f} | {_mib(r)} |")
    return lines


def _relative_cost(results: dict) -> list[str]:
    """Mean wall time of each method's pretraining and zero-shot evaluation relative to RoPE's."""

    def mean_seconds(stage: str, method: str) -> float | None:
        runs = results[stage].get(method, {})
        return statistics.fmean(r["seconds"] for r in runs.values()) if runs else None

    lines = []
    for stage, label in (("pretrain", "pretraining"), ("zero_shot", "zero-shot evaluation")):
        rope = mean_seconds(stage, "rope")
        if not rope:
            continue
        parts = [f"{m} {t / rope:.2f}x" for m in results[stage] if m != "rope" and (t := mean_seconds(stage, m))]
        lines.append(f"- {label} wall time relative to RoPE: " + ", ".join(parts) + ".")
    return lines


def build_markdown(results: dict[str, Any], figures: list[str]) -> str:
    """The report: header, verdicts, the paper's three tables, the extras, bias, theory, cost,
    figures and configuration, one section function each."""
    p = results["preset"]
    md = [*_header(results), *_verdict_table(results), *_tables(results)]
    if results["grid"]:
        md += ["", "## Beyond the paper: alpha x theta (zero-shot, pretrained at L0)", ""]
        grid = {"tapa (alpha 0.1, theta 0.5)": results["zero_shot"]["tapa"], **results["grid"]}
        md += _ppl_table(grid, p["eval_lengths"], p["seq_len"])
    if results["passkey"]:
        md += _passkey_section(results)
    md += [*_bias_section(results["bias"]), *_theory_section(results["theory"])]
    md += ["", "## Cost: wall-clock and peak memory", "", *_relative_cost(results), "", *_cost(results)]
    md += ["", "## Figures", ""]
    for f in figures:
        md += [f"![{Path(f).stem}]({f})", "", f"*Figure: {_caption(Path(f).stem)}*", ""]
    md += ["", "## Configuration", "", "```json", json.dumps(p, indent=1), "```", ""]
    return "\n".join(md)


def _header(results: dict[str, Any]) -> list[str]:
    p, env = results["preset"], results["environment"]
    md = [f"# TAPA reproduction, preset `{p['name']}`", ""]
    if p.get("toy"):
        md += [
            "**A smoke-scale preset: its models are far too small and too briefly trained for any verdict below "
            "to mean anything. It checks that the pipeline runs end to end.**",
            "",
        ]
    if p.get("untested"):
        md += ["**This preset has not been run by the maintainers (untested).**", ""]
    md += [
        f"Command: `tapa reproduce --preset {p['name']} --out DIR`. "
        f"Compute time {results['stage_seconds'] / 60:.1f} min (all stages; this "
        f"invocation {results['wall_seconds'] / 60:.1f} min, less when stages were cached). "
        f"Environment: Python {env['python']}, torch {env['torch']}, {env['processor'] or env['machine']}, "
        f"{env['threads']} threads, GPU {env['cuda'] or 'none'}.",
        "",
        f"Models: {_tokens(p)}, d_model {p['d_model']}, {p['n_layers']} layers, {p['n_heads']} heads of "
        f"{p.get('head_dim') or p['d_model'] // p['n_heads']}; pretrained at "
        f"L0 = {p['seq_len']} tokens for {p['pretrain_steps']} steps of {p['batch_size']} sequences; fine-tuned at "
        f"{p['finetune_len']} for {p['finetune_steps']} steps; seeds {', '.join(map(str, p['seeds']))}. "
        f"Perplexity: first {p['eval_tokens']:,} tokens of the test book (Persuasion), sliding window, "
        "stride = window/4. "
        f"Perplexities are per {_unit(p)} (the paper's are per BPE token of a 128K vocabulary on PG19), so compare "
        "shapes, not values.",
        "",
    ]
    if p["left_out"]:
        md += ["Left out by this preset: " + "; ".join(p["left_out"]) + ".", ""]
    return md


def _verdict_table(results: dict[str, Any]) -> list[str]:
    md = ["## Verdicts (docs/paper.md section 4)", "", "| claim | verdict | evidence | rule |", "|---|---|---|---|"]
    for key, v in results["verdicts"].items():
        md.append(f"| {key}. {v['claim']} | **{v['verdict']}** | {v['evidence']} | {v.get('threshold', '-')} |")
    return md


def _tables(results: dict[str, Any]) -> list[str]:
    """The paper's Tables 2, 1 and 3 redone, each beside the paper's own numbers."""
    p = results["preset"]
    lengths, L0 = p["eval_lengths"], p["seq_len"]
    md = ["", "## Table 2: zero-shot perplexity by length (no fine-tuning)", ""]
    md += _ppl_table(results["zero_shot"], lengths, L0)
    if any("+" in m for m in results["zero_shot"]):
        md += [
            "",
            "rope+pi / rope+yarn / rope+ntk: the pretrained RoPE model with inference-time scaling of factor "
            "min(8, L / L0) at length L, so none at or below L0 (as in the paper, where these rows equal RoPE "
            "there) and the paper's factor 8 from 8x on.",
        ]
    md += ["", "Paper (pretrained at 8K, PG19; columns 1/8x .. 4x):", "", *_paper(PAPER_TABLE_2, PAPER_LENGTHS_2)]
    md += ["", f"## Table 1: after fine-tuning at {p['finetune_len']} (4x)", ""]
    md += _ppl_table(results["finetuned"], lengths, L0)
    md += ["", "Paper (fine-tuned at 32K = 4x; columns 1/8x .. 8x):", "", *_paper(PAPER_TABLE_1, PAPER_LENGTHS_1)]
    md += ["", "## Table 3: phase ablation (fine-tuned TAPA, quadratic vs linear)", ""]
    phases = {m: results["finetuned"][m] for m in ("tapa", "tapa_linear") if m in results["finetuned"]}
    return md + _ppl_table(phases, lengths, L0)


def _passkey_section(results: dict[str, Any]) -> list[str]:
    p = results["preset"]
    md = [
        "",
        "## Beyond the paper: passkey (candidates accuracy, averaged over depths)",
        "",
        f"Each fine-tuned model is first tuned on passkey prompts at its training length for "
        f"{p['passkey_steps']} steps; a prompt counts as correct when the true {KEY_DIGITS}-digit key "
        f"scores best among {N_CANDIDATES} candidates (chance {1 / N_CANDIDATES:.0%}); "
        f"{p['passkey_trials']} keys per length and depth. Greedy exact-match accuracy and the "
        "per-depth cells are in results.json and the heatmaps.",
        "",
    ]
    cells = [c for s in results["passkey"].values() for r in s.values() for c in r["cells"]]
    passkey_lengths = sorted({c["length"] for c in cells})
    md += ["| method | seed | " + " | ".join(str(n) for n in passkey_lengths) + " |"]
    md += ["|---|---|" + "---|" * len(passkey_lengths)]
    for method, seeds in results["passkey"].items():
        for seed, r in seeds.items():
            by_len: dict[int, list[float]] = {}
            for c in r["cells"]:
                by_len.setdefault(c["length"], []).append(c["candidates"])
            md.append(
                f"| {method} | {seed} | " + " | ".join(f"{statistics.fmean(v):.0%}" for v in by_len.values()) + " |"
            )
    return md


def _bias_section(bias: dict[str, Any]) -> list[str]:
    md = [
        "",
        f"## Appendix I: distance bias (near [0, {bias['near']}] minus far [{bias['far']}, "
        f"{bias['far'] + bias['near']}])",
        "",
        "| model | seed | mean | std | skewness | paper mean | paper std |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, r in bias["methods"].items():
        paper = PAPER_STATS.get(method, {"mean": "-", "std": "-"})
        for seed, s in r.get("seeds", {"0": r["pooled"]}).items():
            md.append(
                f"| {method} | {seed} | {s['mean']:.3f} | {s['std']:.3f} | {s['skewness']:.2f} | "
                f"{paper['mean']} | {paper['std']} |"
            )
    return md


def _theory_section(th: dict[str, Any]) -> list[str]:
    fraction = th["theorem_2_2_at_paper_base"]["fraction"]
    ranges = ", ".join(f"{k}: {v:.2f}" for k, v in th["theorem_2_3_bias_range_by_base"].items())
    slopes = "; ".join(
        f"D={s['D']}, theta={s['theta']}, alpha={s['alpha']}: {s['fitted_slope']:.2f} vs {s['predicted_slope']:g}"
        for s in th["decay_slopes"]
    )
    return [
        "",
        "## Theory checks",
        "",
        f"- Theorem 2.2 at base 5e5: {fraction:.1%} of near/far pairs beat |mu0|/8.",
        f"- Theorem 2.3, range of E score over 0..8192 by base: {ranges}.",
        f"- Theorem 3.2 slopes: {slopes}.",
        f"- Theorem 3.3: Monte Carlo inside the 95% CI of the closed form at {th['mc_inside_ci']['mean']:.0%} "
        f"(mean) and {th['mc_inside_ci']['var']:.0%} (variance) of the distances.",
    ]


def markdown_to_html(md: str, root: Path) -> str:
    """Enough Markdown for our own reports: headings, tables, lists, code blocks, images (embedded)."""
    out, in_code, in_table = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            path = root / line[line.index("(") + 1 : -1]
            data = base64.b64encode(path.read_bytes()).decode() if path.is_file() else ""
            out.append(f'<p><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:90%}img{max-width:100%}pre{background:#f4f4f4}"
    )
    head = f"<meta charset='utf-8'><title>TAPA reproduction</title><style>{style}</style>"
    return f"<!doctype html><html><head>{head}</head><body>{''.join(out)}</body></html>"


def _inline(text: str) -> str:
    text = html.escape(text)
    parts = text.split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def write_report(results: dict[str, Any], out: Path) -> None:
    figures = sorted(str(p.relative_to(out)) for p in (out / "figures").glob("*.png"))
    md = build_markdown(results, figures)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(markdown_to_html(md, out))
