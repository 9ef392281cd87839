"""report.md and the training-curve figure of ``tapa study real-convert`` (from its results only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tapa.utils.report import markdown_table, pyplot

ROWS = {
    "original": "original RoPE model",
    "original+yarn": "original + YaRN (inference time, past its training length)",
    "naive_zero_shot": "TAPA, naive conversion, zero-shot",
    "lowfreq_zero_shot": "TAPA, lowfreq conversion, zero-shot",
    "tapa_trained": "TAPA, lowfreq conversion + continued pretraining",
    "rope_trained": "RoPE + the same continued pretraining",
    "rope_trained+yarn": "RoPE + continued pretraining + YaRN (inference time)",
}


def perplexity_table(results: dict[str, Any]) -> str:
    lengths = [str(n) for n in results["study"]["eval_lengths"]]
    rows = []
    for name, stage in results["perplexity"].items():
        got = stage["lengths"]
        cells = []
        for n in lengths:
            if n not in got:
                cells.append("")
                continue
            r = got[n]
            interval = f" ({r['low']:.1f}-{r['high']:.1f})" if r.get("low") is not None else ""
            cells.append(f"{r['perplexity']:.1f}{interval}")
        rows.append([ROWS.get(name, name), *cells])
    return markdown_table(["model", *lengths], rows)


def curve_table(results: dict[str, Any]) -> str:
    arms = results["train"]
    steps = sorted({int(s) for arm in arms.values() for s in arm["curve"]})
    rows = [
        [str(s), *(f"{math.exp(arms[a]['curve'][str(s)]):.2f}" if str(s) in arms[a]["curve"] else "" for a in arms)]
        for s in steps
    ]
    return markdown_table(["step", *(f"{a} validation perplexity" for a in arms)], rows)


def ratio_lines(results: dict[str, Any]) -> list[str]:
    """TAPA trained / RoPE trained at each length (both point values, their window intervals above)."""
    ppl = results["perplexity"]
    lines = []
    for n in map(str, results["study"]["eval_lengths"]):
        tapa = ppl.get("tapa_trained", {}).get("lengths", {}).get(n)
        rope = ppl.get("rope_trained", {}).get("lengths", {}).get(n)
        yarn = ppl.get("rope_trained+yarn", {}).get("lengths", {}).get(n)
        if tapa and rope:
            extra = f"; vs RoPE + YaRN {tapa['perplexity'] / yarn['perplexity']:.2f}x" if yarn else ""
            lines.append(
                f"- {n} tokens: TAPA / RoPE (both trained) = {tapa['perplexity'] / rope['perplexity']:.2f}x{extra}"
            )
    return lines


def write_report(results: dict[str, Any], out: Path) -> None:
    s, m = results["study"], results["model"]
    machine = results["machine"]
    speed = results["speed"]
    measured = f"measured {speed['tokens_per_second']:.0f} tokens/s (TAPA arm's shape, 3 steps); " if speed else ""
    zero = results["train"].get("tapa", {})
    text = [
        "# A real pretrained model, converted to TAPA and continually pretrained",
        "",
        f"Source: `{results['source']}`: a Llama with {m['layers']} layers, d_model {m['d_model']}, {m['heads']} query "
        f"/ {m['kv_heads']} key-value heads of {m['head_dim']}, vocabulary {m['vocab']}, trained at up to "
        f"{m['max_seq_len']} tokens, RoPE base {m['rope_base']:g}.",
        "",
        "Conversions: `naive` keeps every weight and reads each head's first half as TAPA's amplitude and the second "
        "as its phase (each RoPE rotation pair is cut in two); `lowfreq` moves RoPE's lowest-frequency pairs, whole, "
        "into the amplitude (scaled so the amplitude equals their RoPE terms at distance 0) and the rest into the "
        f"phase, whose query rows are scaled by {s['phase_init']:g} so the phase starts near 0 "
        f"(phase scale s = {s['phase_scale']:.4g}).",
        "",
        f"Continued pretraining, both arms: the training books, {results['steps']} steps of {s['batch_size']} x "
        f"{s['train_len']} tokens ({results['tokens_per_arm']:,} tokens each, same order), peak LR {s['lr']:g} "
        f"(warmup {s['warmup_steps']}, cosine to 0.1x), training only `{', '.join(s['train_only'])}` (the rest frozen "
        f"in both arms); {measured}seed {s['seed']}.",
        "",
        "## Test-book perplexity by context length",
        "",
        f"Perplexity of the tokens at positions L/2 .. L-1 of non-overlapping windows of L tokens over the first "
        f"max({s['eval_tokens']}, L) tokens of the test book (every scored token sees at least L/2 tokens); in "
        "brackets the 95% t-interval over windows where there are several (windows of one text are not independent: "
        "read it as a lower bound on the uncertainty).",
        "",
        perplexity_table(results),
        "",
        *ratio_lines(results),
        "",
        "## Validation perplexity during continued pretraining (validation book, training length)",
        "",
        curve_table(results) if zero else "(no training run)",
        "",
        "![validation perplexity over steps](training_curve.png)",
        "",
        f"Command: `tapa study real-convert SOURCE --out DIR` (study `{s['name']}`). Machine: "
        f"{machine['processor'] or machine.get('machine', '')}, {machine['threads']} threads, torch "
        f"{machine['torch']}; {results['date']}; all stages {results['stage_seconds'] / 60:.1f} min.",
        "",
    ]
    (out / "report.md").write_text("\n".join(text))


def plot_curves(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for arm, res in results["train"].items():
        pts = sorted((int(k), math.exp(v)) for k, v in res["curve"].items())
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=arm)
    ax.set_xlabel("step")
    ax.set_ylabel("validation perplexity")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
