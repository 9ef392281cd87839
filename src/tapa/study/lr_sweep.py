"""A learning-rate sweep at a reproduce preset's geometry: each swept method pretrained
exactly as ``tapa reproduce`` pretrains it (same model, tokenizer, data, steps, seed 0),
at each peak LR of a grid, read by the validation loss (Northanger Abbey, never the test
book the report's tables use). The paper's choice, TAPA at RoPE's LR / 5, is one point.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tapa.experiment.runs import write_results
from tapa.reproduce.presets import Preset
from tapa.train.config import DEFAULT_LR

GRIDS = {
    "rope": (1e-3, 2e-3, 4e-3),
    "tapa": (DEFAULT_LR["rope"] / 5, 1e-3, 2e-3, 4e-3),  # 4e-4 = the paper's TAPA/RoPE ratio of 1/5
}
SMOKE_GRIDS = {"rope": (1e-3, 2e-3), "tapa": (4e-4, 1e-3)}


def run_lr_sweep(
    preset: Preset,
    out: str | Path,
    grids: dict[str, tuple[float, ...]] = GRIDS,
    cache_dir: str | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    from tapa.reproduce.pipeline import Reproduction

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed = preset.seeds[0]
    results: dict[str, Any] = {"preset": preset.name, "seed": seed, "grids": grids, "runs": {}, "best": {}}
    for method, grid in grids.items():
        for lr in grid:
            rep = Reproduction(replace(preset, lr=((method, lr),)), out, cache_dir, verbose)
            rep.log(f"{method} at peak LR {lr:g}")
            res = rep.pretrain(method, seed)
            results["runs"].setdefault(method, {})[f"{lr:g}"] = {
                "lr": lr,
                "val_loss": res["val_loss"],
                "val_ppl": math.exp(res["val_loss"]),
                "run": res["run"],
                "seconds": res["seconds"],
            }
        runs = results["runs"][method]
        results["best"][method] = min(runs.values(), key=lambda r: r["val_loss"])["lr"]
    results["wall_seconds"] = time.perf_counter() - started
    write_results(out, results)
    (out / "report.md").write_text(lr_report(results, preset))
    return results


def lr_table(results: dict[str, Any]) -> str:
    lines = [
        "| method | peak LR | validation loss (nats/token) | validation perplexity | best |",
        "|---|---|---|---|---|",
    ]
    for method, runs in results["runs"].items():
        for key, r in runs.items():
            best = "**best**" if r["lr"] == results["best"].get(method) else ""
            lines.append(f"| {method} | {key} | {r['val_loss']:.4f} | {r['val_ppl']:.2f} | {best} |")
    return "\n".join(lines)


def lr_report(results: dict[str, Any], preset: Preset) -> str:
    paper = DEFAULT_LR["rope"] / 5
    return "\n".join(
        [
            f"# Learning-rate sweep at the `{preset.name}` geometry",
            "",
            f"Each run is `tapa reproduce --preset {preset.name}`'s pretraining stage of its method (seed "
            f"{results['seed']}, {preset.pretrain_steps} steps of {preset.batch_size} x {preset.seq_len} tokens) "
            f"at the peak LR given; read by the validation book's loss. TAPA at {paper:g} is the paper's ratio "
            f"(RoPE's default {DEFAULT_LR['rope']:g} / 5).",
            "",
            lr_table(results),
            "",
            f"Wall time of this call: {results['wall_seconds'] / 60:.1f} min.",
            "",
        ]
    )
