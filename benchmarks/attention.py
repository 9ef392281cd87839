r"""Attention benchmark: TAPA reference, chunked and fused kernels vs RoPE + PyTorch SDPA.

For each length L it times the forward pass (no grad) and forward + backward, and measures
the peak memory of forward + backward (peak RSS above the level before the call on CPU, see
tapa.utils.memory; max_memory_allocated on CUDA). It prints a Markdown table with the
ratios TAPA / SDPA from the same run.

Timing is interleaved: each repeat calls every method once, in turn, so a slow spell of a
shared machine hits all of them alike. A time is the median over repeats; a ratio is the
median over repeats of the paired ratio (method / SDPA within the same repeat).

    python benchmarks/attention.py                      # L = 1K..8K, B=1, H=4, D=64, causal
    python benchmarks/attention.py --lengths 1024 2048 --repeats 5 --json out.json
    python benchmarks/attention.py --methods tapa_fused tapa_chunked --lengths 4096 16384
    python benchmarks/attention.py --device cuda --dtype bfloat16 --methods tapa_triton tapa_chunked \
        --lengths 2048 8192 16384 32768 --max-reference-len 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from timing import machine, paired_ratio, sync, time_interleaved

from tapa.attention import tapa_attention
from tapa.positional import RotaryEmbedding
from tapa.utils.memory import measure_peak


def rope_sdpa(rope: RotaryEmbedding) -> Callable:
    def run(q, k, v):
        cos, sin = rope(torch.arange(q.shape[2], device=q.device))
        return F.scaled_dot_product_attention(rope.rotate(q, cos, sin), rope.rotate(k, cos, sin), v, is_causal=True)

    return run


def methods(head_dim: int) -> dict[str, Callable]:
    rope = RotaryEmbedding(head_dim, 10000.0)
    return {
        "tapa_reference": lambda q, k, v: tapa_attention(q, k, v, impl="reference"),
        "tapa_chunked": lambda q, k, v: tapa_attention(q, k, v, impl="chunked"),
        "tapa_fused": lambda q, k, v: tapa_attention(q, k, v, impl="fused"),
        "tapa_triton": lambda q, k, v: tapa_attention(q, k, v, impl="triton"),
        "rope_sdpa": rope_sdpa(rope),
    }


def selected(args: argparse.Namespace) -> dict[str, Callable]:
    """The methods asked for, always with the baseline (rope_sdpa) last."""
    every = methods(args.head_dim)
    every.pop("tapa_fused" if args.device != "cpu" else "tapa_triton")
    names = [m for m in args.methods if m in every and m != "rope_sdpa"] + ["rope_sdpa"]
    return {name: every[name] for name in names}


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - base
    return measure_peak(fn)[1]


def peak_in_fresh_process(args: argparse.Namespace, name: str, length: int) -> float:
    """Peak MiB of one forward + backward, measured in a new process.

    On CPU the measurement is the rise of peak RSS, so it must run before anything else
    has grown the allocator's free lists: hence a fresh interpreter per measurement.
    """
    cmd = [
        sys.executable,
        __file__,
        "--peak-only",
        name,
        "--lengths",
        str(length),
        "--batch",
        str(args.batch),
        "--heads",
        str(args.heads),
        "--head-dim",
        str(args.head_dim),
        "--dtype",
        args.dtype,
        "--device",
        args.device,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def peak_only(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    shape = (args.batch, args.heads, args.lengths[0], args.head_dim)
    leaves = [torch.randn(shape, device=device, dtype=getattr(torch, args.dtype), requires_grad=True) for _ in range(3)]
    attn = methods(args.head_dim)[args.peak_only]

    def fwd_bwd(leaves=leaves):
        out = attn(*leaves)
        out.backward(torch.ones_like(out))

    # initialise the runtime (thread pools, kernels) on a tiny input so it is not counted
    fwd_bwd([torch.randn(1, args.heads, 8, args.head_dim, requires_grad=True) for _ in range(3)])
    print(peak_memory(fwd_bwd, device) / 2**20)


def bench(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for length in args.lengths:
        shape = (args.batch, args.heads, length, args.head_dim)
        q, k, v = (torch.randn(shape, device=device, dtype=getattr(torch, args.dtype)) for _ in range(3))
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        attns = {
            n: a for n, a in selected(args).items() if not (n == "tapa_reference" and length > args.max_reference_len)
        }
        repeats = args.repeats if length <= 4096 else max(3, args.repeats // 2)

        def fwd(attn, qkv=(q, k, v)):
            with torch.no_grad():
                return attn(*qkv)

        def fwd_bwd(attn, leaves=leaves):
            out = attn(*leaves)
            out.backward(torch.ones_like(out))
            for t in leaves:
                t.grad = None

        row: dict = {"L": length, "repeats": repeats}
        for key, step in (("fwd", fwd), ("fwdbwd", fwd_bwd)):
            times = time_interleaved({n: (lambda a=a, step=step: step(a)) for n, a in attns.items()}, repeats, device)
            for name, ts in times.items():
                row[f"{name}_{key}_times"] = ts
                row[f"{name}_{key}_s"] = statistics.median(ts)
                row[f"{name}_{key}_ratio"] = paired_ratio(ts, times["rope_sdpa"])
        for name in attns:
            row[f"{name}_peak_mib"] = peak_in_fresh_process(args, name, length)
            print(
                f"  L={length} {name}: fwd {row[f'{name}_fwd_s']:.3f} s, fwd+bwd {row[f'{name}_fwdbwd_s']:.3f} s, "
                f"peak {row[f'{name}_peak_mib']:.0f} MiB",
                flush=True,
            )
        rows.append(row)
    return rows


def table(rows: list[dict], names: list[str]) -> str:
    """One column group per method: forward, forward + backward, their ratios to SDPA, peak memory."""

    def cell(row, key, fmt):
        return fmt.format(row[key]) if key in row else "-"

    def ratio(row, name, key):
        r = row.get(f"{name}_{key}_ratio")
        return f"{r:.2f}x" if r is not None else "-"

    tapa = [n for n in names if n != "rope_sdpa"]
    head = ["L", "SDPA fwd", "SDPA f+b", "SDPA peak"]
    for n in tapa:
        short = n.removeprefix("tapa_")
        head += [f"{short} fwd", f"{short} f+b", f"{short}/SDPA fwd", f"{short}/SDPA f+b", f"{short} peak"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["L"]), cell(r, "rope_sdpa_fwd_s", "{:.3f} s"), cell(r, "rope_sdpa_fwdbwd_s", "{:.3f} s")]
        cells.append(cell(r, "rope_sdpa_peak_mib", "{:.0f} MiB"))
        for n in tapa:
            cells += [cell(r, f"{n}_fwd_s", "{:.3f} s"), cell(r, f"{n}_fwdbwd_s", "{:.3f} s")]
            cells += [ratio(r, n, "fwd"), ratio(r, n, "fwdbwd"), cell(r, f"{n}_peak_mib", "{:.0f} MiB")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-reference-len", type=int, default=8192)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["tapa_reference", "tapa_chunked", "tapa_fused", "tapa_triton"],
        help="TAPA kernels to time (tapa_fused on CPU only, tapa_triton on CUDA only)",
    )
    parser.add_argument("--json", help="also write the raw numbers here")
    parser.add_argument("--peak-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_only:
        peak_only(args)
        return
    env = (
        f"{machine()}, device {args.device}, {args.dtype}, "
        f"B={args.batch} H={args.heads} D={args.head_dim}, causal, medians of {args.repeats} "
        f"interleaved repeats (of {max(3, args.repeats // 2)} above L=4096), ratios paired per repeat"
    )
    print(env)
    rows = bench(args)
    print()
    print(table(rows, list(selected(args))))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
