"""A verdict per claim of docs/paper.md section 4: reproduced / not reproduced / inconclusive.

Perplexities are averaged over seeds; "noise" is the larger of the seed spread (max - min
of the per-seed values, relative) and a floor of 2%.
"""

from __future__ import annotations

import statistics
from typing import Any

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOISE_FLOOR = 0.02
BLOWUP = 10.0  # "orders of magnitude": at least 10x the training-length perplexity
GRACEFUL = 2.0  # "degrades gracefully": at most 2x


def _ppl(table: dict, method: str, length: int) -> tuple[float, float] | None:
    """Mean perplexity over seeds and relative spread, or None if missing."""
    seeds = table.get(method, {})
    values = [s["lengths"][str(length)]["perplexity"] for s in seeds.values() if str(length) in s.get("lengths", {})]
    if not values:
        return None
    mean = statistics.fmean(values)
    return mean, (max(values) - min(values)) / mean


def _verdict(status: str, evidence: str) -> dict[str, str]:
    return {"verdict": status, "evidence": evidence}


def claim_1(results: dict, train_len: int) -> dict[str, str]:
    """At and below the training length all methods are within a few percent (the paper's
    methods: RoPE with and without inference-time scaling, and TAPA; not the ablations)."""
    table = {m: v for m, v in results["zero_shot"].items() if m == "tapa" or m.startswith("rope")}
    lengths = [n for n in results["preset"]["eval_lengths"] if n <= train_len]
    ratios, spreads = [], []
    for length in lengths:
        values = [v for m in table if (v := _ppl(table, m, length))]
        if len(values) < 2:
            continue
        means = [v[0] for v in values]
        ratios.append(max(means) / min(means))
        spreads += [v[1] for v in values]
    if not ratios:
        return _verdict(INCONCLUSIVE, "no perplexities at or below the training length")
    worst, noise = max(ratios), max([NOISE_FLOOR, *spreads])
    text = f"largest best-to-worst ratio at <= L0: {worst:.3f} (noise {noise:.1%})"
    if worst <= 1.05 + noise:
        return _verdict(REPRODUCED, text)
    if worst > 1.10 + 2 * noise:
        return _verdict(NOT_REPRODUCED, text)
    return _verdict(INCONCLUSIVE, text)


def _growth(table: dict, method: str, short: int, long: int) -> tuple[float, float] | None:
    a, b = _ppl(table, method, short), _ppl(table, method, long)
    if a is None or b is None:
        return None
    return b[0] / a[0], max(a[1], b[1], NOISE_FLOOR)


def _extrapolation(table: dict, tapa: str, others: list[str], short: int, long: int, label: str) -> dict[str, str]:
    t = _growth(table, tapa, short, long)
    rivals = {m: g for m in others if (g := _growth(table, m, short, long))}
    if t is None or not rivals:
        return _verdict(INCONCLUSIVE, f"missing perplexities for {label}")
    text = f"perplexity x{t[0]:.2f} for TAPA from {short} to {long}; " + ", ".join(
        f"{m} x{g[0]:.2f}" for m, g in rivals.items()
    )
    worst_rival = max(g[0] for g in rivals.values())
    noise = max(t[1], *(g[1] for g in rivals.values()))
    if t[0] <= GRACEFUL and worst_rival >= BLOWUP:
        return _verdict(REPRODUCED, text)
    tapa_collapses = t[0] >= BLOWUP
    as_bad_as_collapsed_rivals = worst_rival >= BLOWUP and t[0] >= worst_rival * (1 - noise)
    clearly_worse = t[0] > GRACEFUL and t[0] > worst_rival * (1 + noise)
    if tapa_collapses or as_bad_as_collapsed_rivals or clearly_worse:
        return _verdict(NOT_REPRODUCED, text)
    return _verdict(INCONCLUSIVE, text)  # e.g. nobody blows up, or the differences are within noise


def claim_2(results: dict, train_len: int) -> dict[str, str]:
    """Past the training length RoPE/PI/YaRN blow up while TAPA degrades gracefully."""
    others = [m for m in ("rope", "rope+pi", "rope+yarn") if m in results["zero_shot"]]
    return _extrapolation(results["zero_shot"], "tapa", others, train_len, 16 * train_len, "claim 2")


def claim_3(results: dict, train_len: int) -> dict[str, str]:
    """After fine-tuning at 4x, TAPA stays flat to 8x while the others collapse past 4x."""
    others = [m for m in ("rope", "rope_big_base", "pi", "yarn") if m in results["finetuned"]]
    return _extrapolation(results["finetuned"], "tapa", others, 4 * train_len, 8 * train_len, "claim 3")


def claim_4(results: dict, train_len: int) -> dict[str, str]:
    """Quadratic phase beats linear phase (after fine-tuning; zero-shot if not fine-tuned)."""
    table = results["finetuned"] if "tapa_linear" in results["finetuned"] else results["zero_shot"]
    lengths = results["preset"]["eval_lengths"]
    pairs = [(q, lin) for n in lengths if (q := _ppl(table, "tapa", n)) and (lin := _ppl(table, "tapa_linear", n))]
    if not pairs:
        return _verdict(INCONCLUSIVE, "no linear-phase results")
    wins = sum(q[0] < lin[0] for q, lin in pairs)
    mean_ratio = statistics.fmean(lin[0] / q[0] for q, lin in pairs)
    noise = max([NOISE_FLOOR] + [max(q[1], lin[1]) for q, lin in pairs])
    text = f"quadratic better at {wins}/{len(pairs)} lengths; mean linear/quadratic ratio {mean_ratio:.3f}"
    if mean_ratio > 1 + noise and wins > len(pairs) / 2:
        return _verdict(REPRODUCED, text)
    if mean_ratio < 1 - noise:
        return _verdict(NOT_REPRODUCED, text)
    return _verdict(INCONCLUSIVE, text)


def claim_5(results: dict, train_len: int) -> dict[str, str]:
    """RoPE's near-minus-far difference is skewed positive, TAPA's is centred on zero."""
    methods = results.get("bias", {}).get("methods", {})
    if "rope" not in methods or "tapa" not in methods:
        return _verdict(INCONCLUSIVE, "bias not measured for both RoPE and TAPA")
    rope, tapa = methods["rope"]["pooled"], methods["tapa"]["pooled"]
    text = (f"RoPE mean {rope['mean']:.3f} (std {rope['std']:.3f}, skew {rope['skewness']:.2f}); "
            f"TAPA mean {tapa['mean']:.3f} (std {tapa['std']:.3f}, skew {tapa['skewness']:.2f})")  # fmt: skip
    rope_positive = rope["mean"] > 0.1 * rope["std"]
    tapa_centred = abs(tapa["mean"]) < 0.1 * tapa["std"]
    if rope_positive and tapa_centred:
        return _verdict(REPRODUCED, text)
    if not rope_positive and not tapa_centred:
        return _verdict(NOT_REPRODUCED, text)
    return _verdict(INCONCLUSIVE, text)


_EXTRAPOLATION_RULE = (f"reproduced if TAPA's perplexity grows <= {GRACEFUL:g}x while the worst rival's grows "
                       f">= {BLOWUP:g}x; not reproduced if TAPA's grows >= {BLOWUP:g}x, or as much as collapsing "
                       f"rivals', or > {GRACEFUL:g}x and more than the worst rival's beyond noise")  # fmt: skip
CLAIMS = {
    "1": ("At and below the training length all methods are within a few percent", claim_1,
          f"reproduced if best/worst <= 1.05 + noise, not reproduced if > 1.10 + 2 x noise "
          f"(noise = max({NOISE_FLOOR:.0%}, seed spread))"),
    "2": ("Past the training length RoPE/PI/YaRN blow up while TAPA degrades gracefully", claim_2,
          "from L0 to 16 x L0: " + _EXTRAPOLATION_RULE),
    "3": ("After fine-tuning at 4x, TAPA stays flat to 8x while the others collapse", claim_3,
          "from 4 x L0 to 8 x L0: " + _EXTRAPOLATION_RULE),
    "4": ("Quadratic phase beats linear phase", claim_4,
          "reproduced if mean linear/quadratic > 1 + noise and quadratic wins most lengths; "
          "not reproduced if < 1 - noise"),
    "5": ("RoPE's near-minus-far score difference is skewed positive, TAPA's centred on zero", claim_5,
          "reproduced if RoPE's mean > 0.1 std and abs(TAPA's mean) < 0.1 std; not reproduced if neither holds"),
}  # fmt: skip


def all_verdicts(results: dict[str, Any]) -> dict[str, dict[str, str]]:
    train_len = results["preset"]["seq_len"]
    return {key: {"claim": text, **fn(results, train_len), "threshold": rule}
            for key, (text, fn, rule) in CLAIMS.items()}  # fmt: skip
