"""A verdict per claim of docs/paper.md section 4: reproduced / not reproduced / inconclusive.

Claims 1-3: perplexities are averaged over seeds; "noise" is the larger of the seed spread
(max - min of the per-seed values, relative) and a floor of 2%. Claims 4 and 5 compare two
methods, so they need seeds: claim 4 pairs the two phases by seed (>= MIN_SEEDS seeds with
both) and asks the 95% t-interval of the per-seed ratio to clear 1; claim 5 needs >= MIN_SEEDS
seeds of RoPE, TAPA and the NoPE control measured at the paper's far distance (about 1.2 x
the training length), and compares both the mean and the spread with the paper's.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from tapa.paper import PAPER_STATS
from tapa.utils.stats import mean_interval

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOISE_FLOOR = 0.02
BLOWUP = 10.0  # "orders of magnitude": at least 10x the training-length perplexity
GRACEFUL = 2.0  # "degrades gracefully": at most 2x
MIN_SEEDS = 3  # seeds a two-method comparison needs before it can be called either way
FAR_RANGE = (1.0, 2.0)  # the far distance in training lengths: the paper's is 10000 / 8192 = 1.2
CENTRED = 0.1  # "centred on zero": the interval of mean / std lies within +-0.1
WITHIN = 1.05  # "within a few percent": best / worst perplexity at most this (plus noise)
APART = 1.10  # clearly not within a few percent: above this (plus twice the noise)


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
    if worst <= WITHIN + noise:
        return _verdict(REPRODUCED, text)
    if worst > APART + 2 * noise:
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


def _per_seed(table: dict, method: str, lengths: list[int]) -> dict[str, dict[int, float]]:
    return {
        seed: {n: r["lengths"][str(n)]["perplexity"] for n in lengths if str(n) in r.get("lengths", {})}
        for seed, r in table.get(method, {}).items()
    }


def claim_4(results: dict, train_len: int) -> dict[str, str]:
    """Quadratic phase beats linear phase (after fine-tuning; zero-shot if not fine-tuned),
    paired by seed: per seed, the mean over lengths of log(linear / quadratic)."""
    table = results["finetuned"] if "tapa_linear" in results["finetuned"] else results["zero_shot"]
    lengths = results["preset"]["eval_lengths"]
    quad, lin = _per_seed(table, "tapa", lengths), _per_seed(table, "tapa_linear", lengths)
    per_seed = {}
    for seed in sorted(set(quad) & set(lin)):
        shared = [n for n in lengths if n in quad[seed] and n in lin[seed]]
        if shared:
            per_seed[seed] = statistics.fmean(math.log(lin[seed][n] / quad[seed][n]) for n in shared)
    if not per_seed:
        return _verdict(INCONCLUSIVE, "no linear-phase results")
    ratios = ", ".join(f"seed {s}: {math.exp(v):.3f}" for s, v in per_seed.items())
    if len(per_seed) < MIN_SEEDS:
        return _verdict(
            INCONCLUSIVE,
            f"linear/quadratic perplexity, seed-matched: {ratios}; needs >= {MIN_SEEDS} "
            f"seeds with both phases, has {len(per_seed)}",
        )
    stats = mean_interval(list(per_seed.values()))
    text = (
        f"linear/quadratic perplexity {math.exp(stats['mean']):.3f} (95% CI {math.exp(stats['low']):.3f}-"
        f"{math.exp(stats['high']):.3f}, {stats['n']} seeds; {ratios})"
    )
    if stats["low"] > 0:
        return _verdict(REPRODUCED, text)
    if stats["high"] < 0:
        return _verdict(NOT_REPRODUCED, text)
    return _verdict(INCONCLUSIVE, text)


def _bias_seeds(method: dict) -> list[dict]:
    """The per-seed pooled statistics of one method's bias measurement (old files: one, seed 0)."""
    if "seeds" in method:
        return list(method["seeds"].values())
    return [method["pooled"]] if "pooled" in method else []


def claim_5(results: dict, train_len: int) -> dict[str, str]:
    """RoPE's near-minus-far difference is skewed positive, TAPA's is centred on zero.

    Needs >= MIN_SEEDS seeds of RoPE, TAPA and NoPE at a far distance of FAR_RANGE x L0.
    Reproduced when RoPE's mean difference is above 0 (t-interval over seeds) with positive
    skew, TAPA's mean / std interval lies within +-CENTRED, and TAPA's spread exceeds RoPE's
    (the paper: 3.3 vs 0.85) and NoPE's (a model whose scores ignore distance is centred too:
    centring alone does not tell TAPA from it)."""
    bias = results.get("bias", {})
    methods = bias.get("methods", {})
    seeds = {m: _bias_seeds(methods.get(m, {})) for m in ("rope", "tapa", "nope")}
    if not seeds["rope"] or not seeds["tapa"]:
        return _verdict(INCONCLUSIVE, "bias not measured for both RoPE and TAPA")
    r0, t0 = seeds["rope"][0], seeds["tapa"][0]
    text = (
        f"RoPE mean {r0['mean']:.3f} (std {r0['std']:.3f}, skew {r0['skewness']:.2f}); "
        f"TAPA mean {t0['mean']:.3f} (std {t0['std']:.3f}, skew {t0['skewness']:.2f})"
    )
    far = bias.get("far")
    missing = []
    if far is None or not FAR_RANGE[0] <= far / train_len <= FAR_RANGE[1]:
        where = f"{far} = {far / train_len:.1f} x L0" if far is not None else "not recorded"
        missing.append(f"far distance {where}, needs {FAR_RANGE[0]:g}-{FAR_RANGE[1]:g} x L0 (the paper's ~1.2)")
    if not seeds["nope"]:
        missing.append("no NoPE control")
    thin = [m for m, v in seeds.items() if v and len(v) < MIN_SEEDS]
    if thin:
        missing.append(f"{', '.join(thin)}: fewer than {MIN_SEEDS} seeds")
    if missing:
        return _verdict(
            INCONCLUSIVE, f"{text} (seed {'0' if len(seeds['rope']) == 1 else 'first'}); " + "; ".join(missing)
        )
    rope_mean = mean_interval([s["mean"] for s in seeds["rope"]])
    rope_skew = statistics.fmean(s["skewness"] for s in seeds["rope"])
    tapa_z = mean_interval([s["mean"] / s["std"] for s in seeds["tapa"]])
    spread = {m: mean_interval([s["std"] for s in v]) for m, v in seeds.items()}
    text = (
        f"RoPE mean {rope_mean['mean']:.3f} (95% CI {rope_mean['low']:.3f}-{rope_mean['high']:.3f}), skew "
        f"{rope_skew:.2f}; TAPA mean/std {tapa_z['mean']:.3f} ({tapa_z['low']:.3f}-{tapa_z['high']:.3f}); std "
        + ", ".join(f"{m} {v['mean']:.3f}" for m, v in spread.items())
        + f"; {len(seeds['tapa'])} seeds"
    )
    rope_skewed = rope_mean["low"] > 0 and rope_skew > 0
    tapa_centred = tapa_z["low"] > -CENTRED and tapa_z["high"] < CENTRED
    tapa_broad = spread["tapa"]["low"] > spread["rope"]["high"] and spread["tapa"]["low"] > spread["nope"]["high"]
    if rope_skewed and tapa_centred and tapa_broad:
        return _verdict(REPRODUCED, text)
    rope_not = rope_mean["high"] < 0
    tapa_not = tapa_z["low"] > CENTRED or tapa_z["high"] < -CENTRED
    if rope_not or tapa_not:
        return _verdict(NOT_REPRODUCED, text)
    return _verdict(INCONCLUSIVE, text)


_EXTRAPOLATION_RULE = (
    f"reproduced if TAPA's perplexity grows <= {GRACEFUL:g}x while the worst rival's grows "
    f">= {BLOWUP:g}x; not reproduced if TAPA's grows >= {BLOWUP:g}x, or as much as collapsing "
    f"rivals', or > {GRACEFUL:g}x and more than the worst rival's beyond noise"
)
CLAIMS = {
    "1": (
        "At and below the training length all methods are within a few percent",
        claim_1,
        f"reproduced if best/worst <= {WITHIN:.2f} + noise, not reproduced if > {APART:.2f} + 2 x noise "
        f"(noise = max({NOISE_FLOOR:.0%}, seed spread))",
    ),
    "2": (
        "Past the training length RoPE/PI/YaRN blow up while TAPA degrades gracefully",
        claim_2,
        "from L0 to 16 x L0: " + _EXTRAPOLATION_RULE,
    ),
    "3": (
        "After fine-tuning at 4x, TAPA stays flat to 8x while the others collapse",
        claim_3,
        "from 4 x L0 to 8 x L0: " + _EXTRAPOLATION_RULE,
    ),
    "4": (
        "Quadratic phase beats linear phase",
        claim_4,
        f"paired by seed, >= {MIN_SEEDS} seeds with both phases: reproduced if the 95% t-interval of the per-seed "
        "linear/quadratic ratio (geometric mean over lengths) lies above 1, not reproduced if below 1",
    ),
    "5": (
        "RoPE's near-minus-far score difference is skewed positive, TAPA's centred on zero",
        claim_5,
        f">= {MIN_SEEDS} seeds of RoPE, TAPA and NoPE, far distance {FAR_RANGE[0]:g}-{FAR_RANGE[1]:g} x L0: "
        f"reproduced if RoPE's mean difference is above 0 (95% t-interval) with positive skew, TAPA's mean/std "
        f"interval within +-{CENTRED:g} and TAPA's std above RoPE's and NoPE's (the paper: "
        f"{PAPER_STATS['tapa']['std']} vs {PAPER_STATS['rope']['std']}); not "
        f"reproduced if RoPE's mean is below 0 or TAPA's mean/std interval lies outside +-{CENTRED:g}",
    ),
}


def all_verdicts(results: dict[str, Any]) -> dict[str, dict[str, str]]:
    train_len = results["preset"]["seq_len"]
    return {
        key: {"claim": text, **fn(results, train_len), "threshold": rule} for key, (text, fn, rule) in CLAIMS.items()
    }
