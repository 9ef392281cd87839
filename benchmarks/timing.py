"""Timing helpers shared by the benchmark scripts: interleaved repeats and paired ratios.

On a shared, noisy machine a slow spell lasts seconds to minutes; timing every method once
per round, in turn, spreads it over all of them, and the ratio of two methods is taken
within each round before the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CPU = torch.device("cpu")


def time_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, device: torch.device = CPU
) -> dict[str, list[float]]:
    """Seconds per call of each function over ``repeats`` rounds, each round calling all in turn
    (after one warm-up call each: kernel builds, allocator, thread pools)."""
    for fn in fns.values():
        fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: list[float], baseline: list[float]) -> float:
    """Median over rounds of time / baseline time in the same round."""
    return statistics.median(t / b for t, b in zip(times, baseline, strict=True))
