"""Uncertainty over seeds: Student-t intervals for a mean, for paired differences, and the
prediction interval of a straight-line fit. Pure Python (no scipy at run time); the tests
check every number against scipy.

A result sentence quotes the mean with its 95% interval over seeds; a ratio of two methods
trained on the same seeds is read from the paired per-seed log ratios (for perplexities,
the per-seed differences of mean loss), whose interval is narrower than two separate ones
when seeds share their data order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tapa.errors import ConfigError

LEVEL = 0.95  # the level of every interval the reports quote


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t > 0."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on :func:`t_cdf` to 1e-12)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ConfigError(f"t_quantile: needs 0 < p < 1 and df > 0, got p={p!r}, df={df!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


def mean_interval(values: Sequence[float], level: float = LEVEL) -> dict[str, Any]:
    """Mean, sample sd and the two-sided t-interval of the mean: mean +- t_{(1+level)/2, n-1} sd / sqrt(n).

    With one value the interval is None (one seed has no spread to quote)."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ConfigError("mean_interval: no values")
    mean = sum(xs) / n
    if n == 1:
        return {"n": 1, "mean": mean, "sd": None, "low": None, "high": None, "level": level}
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "level": level}


def paired_ratio(loss_a: dict[str, float], loss_b: dict[str, float], level: float = LEVEL) -> dict[str, Any]:
    """exp(loss_a - loss_b), the perplexity ratio a / b, paired by seed (the keys both share):
    the t-interval of the per-seed loss differences, exponentiated. ``ratios`` holds each seed's."""
    seeds = sorted(set(loss_a) & set(loss_b), key=str)
    if not seeds:
        raise ConfigError("paired_ratio: the two methods share no seed")
    diffs = [loss_a[s] - loss_b[s] for s in seeds]
    stats = mean_interval(diffs, level)
    expo = {k: (math.exp(stats[k]) if stats[k] is not None else None) for k in ("mean", "low", "high")}
    return {
        "seeds": seeds,
        "n": stats["n"],
        "ratio": expo["mean"],
        "low": expo["low"],
        "high": expo["high"],
        "ratios": {str(s): math.exp(d) for s, d in zip(seeds, diffs, strict=True)},
        "level": level,
    }


def interval_text(stats: dict[str, Any], digits: int = 3) -> str:
    """``1.234 (95% CI 1.100-1.370, 3 seeds)``, or ``1.234 (1 seed)``."""
    value = stats.get("ratio", stats.get("mean"))
    if stats.get("low") is None:
        return f"{value:.{digits}f} (1 seed)"
    pct = round(100 * stats["level"])
    return f"{value:.{digits}f} ({pct}% CI {stats['low']:.{digits}f}-{stats['high']:.{digits}f}, {stats['n']} seeds)"


def line_fit(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Least squares y = a + b x with the residual variance s^2 = SSE / (n - 2) (NaN for two
    points, which a line passes through exactly)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ConfigError(f"line_fit: needs >= 2 paired points, got {n} x and {len(ys)} y")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ConfigError("line_fit: every x is the same")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    sse = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return {
        "n": n,
        "intercept": intercept,
        "slope": slope,
        "s2": sse / (n - 2) if n > 2 else math.nan,
        "mean_x": mx,
        "sxx": sxx,
    }


def prediction_interval(fit: dict[str, Any], x: float, level: float = LEVEL) -> dict[str, float]:
    """The interval for a new observation at ``x``: yhat +- t_{n-2} s sqrt(1 + 1/n + (x - mean_x)^2 / Sxx)
    (needs n >= 3: two points leave no residual to estimate s from)."""
    if fit["n"] < 3:
        raise ConfigError(f"prediction_interval: needs a fit over >= 3 points, got {fit['n']}")
    yhat = fit["intercept"] + fit["slope"] * x
    se = math.sqrt(fit["s2"] * (1.0 + 1.0 / fit["n"] + (x - fit["mean_x"]) ** 2 / fit["sxx"]))
    half = t_quantile(0.5 + level / 2.0, fit["n"] - 2) * se
    return {"x": x, "prediction": yhat, "low": yhat - half, "high": yhat + half, "level": level, "df": fit["n"] - 2}
