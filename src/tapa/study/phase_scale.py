"""Does the paper's 2 pi in TAPA's phase cause its learning-rate ceiling?

TAPA's score is (q_A.k_A / sqrt(D_A)) cos(s |m-n|^alpha q_P.k_P / sqrt(D_P)) with s = 2 pi in
the paper's Eq. 12; the only public TAPA code uses s = 1. Both describe the same function
class (q_P -> q_P s'/s), but at initialisation the phases are s / 2 pi times smaller with
s = 1, and under Adam, whose steps are about the same size whatever the scale, the phase
moves s times faster per step. This study pretrains, at a reproduce preset's geometry and
exactly as ``tapa reproduce`` pretrains (same model, data, steps, tokenizer):

1. a peak-LR sweep on seed 0 of TAPA with s = 2 pi, TAPA with s = 1 (``tapa_unscaled``),
   TAPA with the phase switched off (s = 0: cos = 1, NoPE on the amplitude half,
   ``tapa_phase_off``), RoPE and NoPE;
2. each method's ``top`` best seed-0 LRs on every further seed, and each method's LR then
   chosen by its mean over seeds (a divergence on one seed counts against its LR);
3. validation perplexity (Northanger Abbey, never the test book) per seed, the ratio to RoPE
   paired by seed with a 95% t-interval, and test-book perplexity from L0/4 to 16 L0.

Seed 0 both shortlists the LRs and counts in the mean: a method swept over more LRs is
slightly favoured (a selection effect the report names).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tapa.experiment.runs import write_results
from tapa.reproduce.presets import get_preset
from tapa.utils.stats import mean_interval, paired_ratio


@dataclass(frozen=True)
class PhaseScaleStudy:
    name: str
    preset: str
    sweeps: tuple[tuple[str, tuple[float, ...]], ...]  # (method, peak LRs tried on the first seed)
    seeds: tuple[int, ...]
    evaluate_lengths: bool = True
    top: int = 2  # the best seed-0 LRs of each method that run on every seed


STUDIES = {
    "default": PhaseScaleStudy(
        "default",
        "paper-cpu",
        sweeps=(
            ("rope", (2e-3, 4e-3)),
            ("tapa", (1e-3, 2e-3)),
            ("tapa_unscaled", (1e-3, 2e-3, 3e-3, 4e-3)),
            ("tapa_phase_off", (2e-3, 4e-3)),
            ("nope", (2e-3, 4e-3)),
        ),
        seeds=(0, 1, 2),
    ),
    # the same steps at toy sizes, for the tests
    "smoke": PhaseScaleStudy(
        "smoke",
        "smoke",
        sweeps=(("rope", (2e-3,)), ("tapa", (1e-3,)), ("tapa_unscaled", (1e-3, 2e-3)), ("tapa_phase_off", (2e-3,))),
        seeds=(0, 1),
    ),
}


def run_phase_scale(
    study: PhaseScaleStudy, out: str | Path, cache_dir: str | None = None, verbose: bool = True
) -> dict[str, Any]:
    """Run (or resume) the study into ``out``; returns the results also written to results.json."""
    from tapa.experiment.runs import environment
    from tapa.reproduce.pipeline import Reproduction

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    preset = get_preset(study.preset)
    first, rest = study.seeds[0], study.seeds[1:]
    results: dict[str, Any] = {
        "study": study.name,
        "preset": preset.name,
        "seeds": list(study.seeds),
        "environment": environment(),
        "sweep": {},
        "best_lr": {},
        "seeded": {},
        "seeded_by_lr": {},
        "perplexity": {},
    }

    def reproduction(method: str, lr: float) -> Reproduction:
        return Reproduction(replace(preset, lr=((method, lr),)), out, cache_dir, verbose)

    for method, grid in study.sweeps:
        for lr in grid:
            rep = reproduction(method, lr)
            rep.log(f"{method} at peak LR {lr:g}, seed {first}")
            results["sweep"].setdefault(method, {})[f"{lr:g}"] = _row(rep.pretrain(method, first), lr)
    for method, _grid in study.sweeps:
        sweep = results["sweep"][method]
        shortlist = sorted(sweep.values(), key=lambda r: r["val_loss"])[: study.top]
        by_lr = {}
        for row in shortlist:
            lr = row["lr"]
            rows = {str(first): row}
            rep = reproduction(method, lr)
            for seed in rest:
                rep.log(f"{method} at LR {lr:g}, seed {seed}")
                rows[str(seed)] = _row(rep.pretrain(method, seed), lr)
            by_lr[f"{lr:g}"] = rows
        results["seeded_by_lr"][method] = by_lr
        best = min(by_lr, key=lambda k: sum(r["val_loss"] for r in by_lr[k].values()) / len(by_lr[k]))
        results["best_lr"][method] = by_lr[best][str(first)]["lr"]
        results["seeded"][method] = by_lr[best]
    if study.evaluate_lengths:
        for method, _grid in study.sweeps:
            rep = reproduction(method, results["best_lr"][method])
            for seed, row in results["seeded"][method].items():
                ppl = rep.perplexity(f"ppl_{method}_s{seed}", row["run"], preset.eval_lengths)
                results["perplexity"].setdefault(method, {})[seed] = {
                    k: v["perplexity"] for k, v in ppl["lengths"].items()
                }
    results["summary"] = summarise(results)
    results["wall_seconds"] = time.perf_counter() - started
    results["stage_seconds"] = sum(r["seconds"] for m in results["sweep"].values() for r in m.values()) + sum(
        r["seconds"]
        for m in results["seeded_by_lr"].values()
        for rows in m.values()
        for s, r in rows.items()
        if s != str(first)
    )
    write_results(out, results)
    from tapa.study.phase_scale_report import plot_phase_scale, write_report

    plot_phase_scale(results, out / "phase_scale.png")
    write_report(results, preset, out)
    return results


def _row(res: dict[str, Any], lr: float) -> dict[str, Any]:
    return {
        "lr": lr,
        "val_loss": res["val_loss"],
        "val_ppl": math.exp(res["val_loss"]),
        "run": res["run"],
        "seconds": res["seconds"],
    }


def _interval_ppl(by_seed: dict[str, float]) -> dict[str, Any]:
    stats = mean_interval(list(by_seed.values()))
    return {
        "n": stats["n"],
        "val_ppl": math.exp(stats["mean"]),
        "level": stats["level"],
        "low": math.exp(stats["low"]) if stats["low"] is not None else None,
        "high": math.exp(stats["high"]) if stats["high"] is not None else None,
        "per_seed": {s: math.exp(v) for s, v in by_seed.items()},
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Per method at its chosen LR: validation perplexity over seeds (t-interval of the mean
    loss, exponentiated), and the same for every shortlisted LR; paired-by-seed ratios to RoPE,
    to the phase-off control and between the two phase scales."""
    losses = {m: {s: r["val_loss"] for s, r in rows.items()} for m, rows in results["seeded"].items()}
    out: dict[str, Any] = {"methods": {}, "ratios": {}, "by_lr": {}}
    for method, by_lr in results.get("seeded_by_lr", {}).items():
        out["by_lr"][method] = {
            lr: _interval_ppl({s: r["val_loss"] for s, r in rows.items()}) for lr, rows in by_lr.items()
        }
    for method, by_seed in losses.items():
        out["methods"][method] = {"lr": results["best_lr"][method], **_interval_ppl(by_seed)}
    pairs = [(m, "rope") for m in losses if m != "rope" and "rope" in losses]
    pairs += [(m, "tapa_phase_off") for m in ("tapa", "tapa_unscaled") if m in losses and "tapa_phase_off" in losses]
    if "tapa" in losses and "tapa_unscaled" in losses:
        pairs.append(("tapa", "tapa_unscaled"))
    for a, b in pairs:
        out["ratios"][f"{a}/{b}"] = paired_ratio(losses[a], losses[b])
    return out
