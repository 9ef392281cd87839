"""Peak resident memory of the current process (Linux), for CPU memory measurements.

PyTorch has no allocator statistics on CPU, so we read the kernel's high-water mark of
resident memory (``VmHWM`` in ``/proc/self/status``) and reset it between measurements by
writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0). Large tensors are allocated with
mmap and returned to the OS when freed, so the high-water mark reflects the true peak of
live tensors during the measured region, plus allocator slack.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_rss_supported() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn`` and return (its result, peak memory in bytes above the level before it).

    On CUDA tensors use torch.cuda.max_memory_allocated instead; this measures host memory.
    """
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    reset_peak_rss()
    before = _status_kib("VmRSS")
    result = fn()
    peak = _status_kib("VmHWM")
    return result, max(0, peak - before) * 1024
