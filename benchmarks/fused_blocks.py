"""Tile sizes of the fused CPU kernel: each (block_q, block_k) against plain SDPA, in one run.

    python benchmarks/fused_blocks.py --length 4096 --repeats 7 --mode fb

Prints, per tile size, the median and the minimum time and their ratios to SDPA's (causal,
B=1, H=4, D=64, float32; SDPA without RoPE). The calls are interleaved, so a noisy machine
slows every method alike; the minimum is the less noisy estimate on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import time_interleaved

from tapa.attention.fused_cpu import fused_cpu_attention
from tapa.attention.phase import quadratic_parts

TILES = [(128, 256), (256, 256), (128, 512), (256, 512), (64, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mode", choices=["f", "fb"], default="fb", help="forward, or forward + backward")
    args = parser.parse_args()
    grad = args.mode == "fb"
    q, k, v = (torch.randn(1, 4, args.length, 64, requires_grad=grad) for _ in range(3))

    def fused(bq: int, bk: int) -> Callable[[], torch.Tensor]:
        return lambda: fused_cpu_attention(
            quadratic_parts(q, k, 0.5), v, alpha=0.1, causal=True, block_q=bq, block_k=bk
        )

    fns: dict[str, Callable[[], torch.Tensor]] = {
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    }
    fns.update({f"{bq}x{bk}": fused(bq, bk) for bq, bk in TILES})

    def call(fn: Callable[[], torch.Tensor]) -> None:
        if grad:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()

    times = time_interleaved({name: (lambda fn=fn: call(fn)) for name, fn in fns.items()}, args.repeats)
    med0, min0 = statistics.median(times["sdpa"]), min(times["sdpa"])
    print(f"L={args.length} mode={args.mode} repeats={args.repeats} threads={torch.get_num_threads()}")
    for name, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        print(f"{name:>8}: median {med:.3f} s ({med / med0:.3f}x)  min {low:.3f} s ({low / min0:.3f}x)")


if __name__ == "__main__":
    main()
