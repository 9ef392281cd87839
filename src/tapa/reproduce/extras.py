"""Stages beyond perplexity: passkey, the Appendix I bias, the theory figures."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

from tapa.data.tokenizer import Bytes
from tapa.evaluate.passkey import passkey_grid, plot_passkey
from tapa.evaluate.passkey_finetune import passkey_finetune
from tapa.experiment.stages import run_stage
from tapa.model import load_pretrained
from tapa.theory.bias import checkpoint_bias, default_distances, plot_bias
from tapa.theory.report import run_theory

DEPTHS = [0.0, 0.5, 1.0]


def passkey_stage(rep, method: str, seed: int, run: str) -> dict[str, Any]:
    p = rep.preset

    def work(directory: Path) -> dict[str, Any]:
        tuned = directory / "model"
        shutil.rmtree(tuned, ignore_errors=True)
        passkey_finetune(run, tuned, steps=p.passkey_steps, seed=seed, progress=False)
        model = load_pretrained(tuned)
        lengths = [p.finetune_len * f for f in (1, 2)]
        cells = passkey_grid(model, Bytes(), lengths, DEPTHS, p.passkey_trials, seed=seed)
        figures = rep.out / "figures"
        figures.mkdir(exist_ok=True)
        plot_passkey(cells, model.config.max_seq_len, figures / f"passkey_{method}_s{seed}.png", f"Passkey, {method}")
        random.seed(seed)
        return {"cells": cells}

    return run_stage(
        rep.out,
        f"passkey_{method}_s{seed}",
        {"run": run, "steps": p.passkey_steps, "trials": p.passkey_trials},
        work,
        rep.log,
    )


def bias_stage(rep, runs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Appendix I for each method's runs ({method: {seed: run}}): the paper's distances scaled to
    the training length (far = 10000 / 8192 = 1.2 x L0, past it as in the paper), per seed;
    ``pooled`` is the first seed's (the figure shows it), ``seeds`` every seed's."""
    p = rep.preset

    def work(_directory: Path) -> dict[str, Any]:
        near, far = default_distances(p.seq_len)
        samples, out = {}, {}
        for method, by_seed in runs.items():
            out[method] = {"seeds": {}}
            for seed, run in by_seed.items():
                sample, summary = checkpoint_bias(load_pretrained(run), list(rep.docs), p.bias_pairs, near, far)
                out[method]["seeds"][seed] = summary["pooled"]
                if method not in samples:
                    samples[method] = sample
                    out[method].update({k: v for k, v in summary.items() if k != "per_head"})
        figures = rep.out / "figures"
        figures.mkdir(exist_ok=True)
        plot_bias(samples, figures / "bias.png", "Distance bias of the pretrained models (Appendix I)")
        return {"near": near, "far": far, "train_len": p.seq_len, "methods": out}

    # "per_seed": the key of the per-seed, paper-distance version (earlier: seed 0 at 4.9 x L0)
    return run_stage(rep.out, "bias", {"runs": runs, "pairs": p.bias_pairs, "per_seed": True}, work, rep.log)


def theory_stage(rep) -> dict[str, Any]:
    def work(_directory: Path) -> dict[str, Any]:
        report = run_theory(rep.out / "figures", samples=rep.preset.theory_samples)
        slopes = [
            {k: r[k] for k in ("D", "theta", "alpha", "fitted_slope", "predicted_slope")}
            for r in report["tapa"]["decay"]
        ]
        check = report["tapa"]["monte_carlo_vs_closed_form"]
        return {
            "theorem_2_2_at_paper_base": report["rope"]["theorem_2_2_at_paper_base"],
            "theorem_2_3_bias_range_by_base": report["rope"]["theorem_2_3_bias_range_by_base"],
            "decay_slopes": slopes,
            "mc_inside_ci": {"mean": check["mean_inside_ci"], "var": check["var_inside_ci"]},
        }

    return run_stage(rep.out, "theory", {"samples": rep.preset.theory_samples}, work, rep.log)


def positions_stage(rep, runs: dict[str, str]) -> dict[str, Any]:
    """Loss by position in windows of 8 x L0 for each pretrained model (one figure)."""
    from tapa.evaluate.positions import plot_position_losses, position_losses

    length = 8 * rep.preset.seq_len

    def work(_directory: Path) -> dict[str, Any]:
        curves = {method: position_losses(load_pretrained(run), rep.docs, length) for method, run in runs.items()}
        figures = rep.out / "figures"
        figures.mkdir(exist_ok=True)
        title = f"Loss by position in windows of {length} tokens (pretrained at {rep.preset.seq_len})"
        plot_position_losses(curves, rep.preset.seq_len, figures / "positions.png", title)
        return {
            "length": length,
            "methods": {m: {"buckets": c.buckets(), "windows": int(c.counts[0])} for m, c in curves.items()},
        }

    return run_stage(rep.out, "positions", {"runs": runs, "length": length}, work, rep.log)


LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_perplexity(results: dict[str, Any], path: Path) -> None:
    import statistics

    from tapa.utils.report import pyplot

    plt = pyplot()

    preset = results["preset"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    panels = (
        (axes[0], "zero_shot", "pretrained at L0, no fine-tuning (Table 2)"),
        (axes[1], "finetuned", f"after fine-tuning at {preset['finetune_len']} (Table 1)"),
    )
    for ax, key, title in panels:
        for i, (method, seeds) in enumerate(results[key].items()):
            lengths = preset["eval_lengths"]
            values = [statistics.fmean(s["lengths"][str(n)]["perplexity"] for s in seeds.values()) for n in lengths]
            ax.plot(
                lengths,
                values,
                ls=LINE_STYLES[i % len(LINE_STYLES)],
                marker=MARKERS[i % len(MARKERS)],
                ms=5,
                mfc="none",
                label=method,
            )
        ax.axvline(preset["seq_len"], color="grey", ls="--", lw=0.8, label="L0")
        if key == "finetuned":
            ax.axvline(preset["finetune_len"], color="grey", ls=":", lw=0.8, label="fine-tuning length")
        ax.set_xscale("log", base=2)
        ax.set_xticks(preset["eval_lengths"], [str(n) for n in preset["eval_lengths"]], fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens, log scale)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    unit = "BPE token" if preset.get("tokenizer") == "bpe" else "byte"
    axes[0].set_ylabel(f"perplexity per {unit} (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
