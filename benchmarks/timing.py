"""Timing helpers shared by the benchmark scripts: interleaved repeats and paired ratios.

On a shared, noisy machine a slow spell lasts seconds to minutes; timing every method once
per round, in turn, spreads it over all of them, and the ratio of two methods is taken
within each round before the median.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CPU = torch.device("cpu")


def cpu_model() -> str:
    """The CPU's model name, family and model from /proc/cpuinfo (e.g. "AMD EPYC, family 26
    model 2"), or what ``platform`` knows where there is no /proc/cpuinfo."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f", family {fields['cpu family']} model {fields['model']}"
    return name


def machine() -> str:
    """One line naming what the numbers were measured on: CPU, cores, threads, torch and the
    vector instructions that PyTorch and the fused TAPA kernel use."""
    parts = [cpu_model(), f"{os.cpu_count()} CPUs", f"{torch.get_num_threads()} threads", f"torch {torch.__version__}"]
    parts.append(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}")
    try:
        from tapa.attention.fused_cpu import vector_isa

        parts.append(f"fused kernel ISA {vector_isa()}")
    except Exception as error:  # a machine without the kernel's requirements still gets a line
        parts.append(f"fused kernel ISA unknown ({error})")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return ", ".join(parts)


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
