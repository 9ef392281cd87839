"""tapa.utils.stats against scipy and statistics on known data."""

import math
import statistics

import pytest

from tapa.errors import ConfigError
from tapa.utils import stats

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")


@pytest.mark.parametrize(
    "a,b,x", [(0.5, 0.5, 0.3), (1.0, 0.5, 0.9), (2.5, 0.5, 0.01), (10.0, 3.0, 0.7), (0.5, 20, 0.02)]
)
def test_betainc_matches_scipy(a, b, x):
    assert stats.betainc(a, b, x) == pytest.approx(scipy_special.betainc(a, b, x), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 30, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(p, df):
    assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8)
    assert stats.t_cdf(scipy_stats.t.ppf(p, df), df) == pytest.approx(p, rel=1e-9)


def test_t_quantile_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="0 < p < 1"):
        stats.t_quantile(1.0, 3)


def test_mean_interval_matches_scipy_and_statistics():
    xs = [4.61, 4.66, 4.58]
    got = stats.mean_interval(xs)
    low, high = scipy_stats.t.interval(0.95, len(xs) - 1, loc=statistics.mean(xs), scale=scipy_stats.sem(xs))
    assert got["mean"] == pytest.approx(statistics.mean(xs))
    assert got["sd"] == pytest.approx(statistics.stdev(xs))
    assert (got["low"], got["high"]) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_one_value_has_no_interval():
    got = stats.mean_interval([3.0])
    assert got["low"] is None and got["high"] is None and got["n"] == 1
    assert stats.interval_text(got) == "3.000 (1 seed)"


def test_paired_ratio_uses_the_seed_differences():
    """Paired by seed: a shared seed effect cancels, so the interval is the one of the differences."""
    a = {"0": 4.60, "1": 4.70, "2": 4.50, "9": 1.0}  # seed 9 has no partner and is left out
    b = {"0": 4.40, "1": 4.52, "2": 4.29}
    got = stats.paired_ratio(a, b)
    diffs = [0.20, 0.18, 0.21]
    low, high = scipy_stats.t.interval(0.95, 2, loc=statistics.mean(diffs), scale=scipy_stats.sem(diffs))
    assert got["seeds"] == ["0", "1", "2"]
    assert got["ratio"] == pytest.approx(math.exp(statistics.mean(diffs)))
    assert got["low"] == pytest.approx(math.exp(low)) and got["high"] == pytest.approx(math.exp(high))
    assert got["ratios"]["1"] == pytest.approx(math.exp(0.18))
    unpaired = stats.mean_interval(list(a.values())[:3])
    assert got["high"] / got["low"] < math.exp(unpaired["high"] - unpaired["low"])


def test_paired_ratio_without_shared_seeds_is_an_error():
    with pytest.raises(ConfigError, match="share no seed"):
        stats.paired_ratio({"0": 1.0}, {"1": 1.0})


def test_prediction_interval_matches_the_textbook_formula_with_scipy_quantiles():
    xs, ys = [1.0, 2.0, 3.0, 4.5], [1.1, 1.9, 3.2, 4.4]
    fit = stats.line_fit(xs, ys)
    ref = scipy_stats.linregress(xs, ys)
    assert fit["slope"] == pytest.approx(ref.slope) and fit["intercept"] == pytest.approx(ref.intercept)
    got = stats.prediction_interval(fit, 8.0)
    n, mx = len(xs), statistics.mean(xs)
    sxx = sum((x - mx) ** 2 for x in xs)
    s = math.sqrt(sum((y - ref.intercept - ref.slope * x) ** 2 for x, y in zip(xs, ys, strict=True)) / (n - 2))
    half = scipy_stats.t.ppf(0.975, n - 2) * s * math.sqrt(1 + 1 / n + (8.0 - mx) ** 2 / sxx)
    yhat = ref.intercept + ref.slope * 8.0
    assert got["low"] == pytest.approx(yhat - half) and got["high"] == pytest.approx(yhat + half)


def test_three_points_give_a_wide_prediction_interval():
    """One residual degree of freedom: the half-width is t_{0.975, 1} = 12.71 standard errors, 6.5x
    the +-1.96 (or +-2) standard errors a normal approximation would quote."""
    fit = stats.line_fit([0.0, 1.0, 2.0], [0.0, 0.15, 0.12])
    got = stats.prediction_interval(fit, 4.0)
    se = math.sqrt(fit["s2"] * (1 + 1 / 3 + (4.0 - 1.0) ** 2 / fit["sxx"]))
    assert got["df"] == 1
    assert (got["high"] - got["low"]) / 2 == pytest.approx(12.7062 * se, rel=1e-4)
