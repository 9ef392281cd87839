"""Decoding throughput: tokens/s of KV-cache generation after a long prompt, TAPA vs RoPE.

For each context length C, a TAPA model and a RoPE model of the same size each prefill a
C-token prompt and then decode N tokens one at a time (greedy, through the KV cache). It
reports the prefill time (median of repeats) and the decoding tokens/s (1 / the median step
time). The two models take turns at every decoding step, so a slow spell of a shared
machine hits both; the ratio TAPA / RoPE is the median over steps of the paired ratio
(RoPE's step time / TAPA's at the same step).

    python benchmarks/decoding.py                          # C = 2K, 4K, 8K, 16K; 32 new tokens
    python benchmarks/decoding.py --contexts 2048 --new-tokens 64 --tapa-impl chunked
    python benchmarks/decoding.py --d-model 512 --n-heads 8 --n-kv-heads 2   # grouped-query
    python benchmarks/decoding.py --dtype bfloat16                            # bfloat16 weights and cache
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from timing import machine, paired_ratio

from tapa.model import ModelConfig, TapaLM


def make(positional: str, args: argparse.Namespace, context: int, impl: str) -> TapaLM:
    torch.manual_seed(0)
    config = ModelConfig(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        max_seq_len=context + args.new_tokens,
        positional=positional,
        attn_impl=impl if positional == "tapa" else "auto",
    )
    return TapaLM(config).eval().to(getattr(torch, args.dtype))


def prefill(model: TapaLM, prompt: torch.Tensor) -> tuple[float, object, torch.Tensor]:
    """(seconds, the filled KV cache, the first generated token)."""
    cache = model.new_cache()
    start = time.perf_counter()
    logits = model(prompt, cache)
    seconds = time.perf_counter() - start
    return seconds, cache, logits[:, -1:].argmax(-1)


@torch.no_grad()
def decode_interleaved(models: dict[str, TapaLM], prompt: torch.Tensor, new_tokens: int) -> dict[str, dict]:
    """Prefill every model, then decode new_tokens steps, the models taking turns at each step.

    Returns per model the prefill seconds and the list of per-step seconds: step i of one
    model and step i of another ran back to back, on caches of the same length.
    """
    state = {name: prefill(model, prompt) for name, model in models.items()}
    steps: dict[str, list[float]] = {name: [] for name in models}
    tokens = {name: s[2] for name, s in state.items()}
    for _ in range(new_tokens):
        for name, model in models.items():
            start = time.perf_counter()
            tokens[name] = model(tokens[name], state[name][1])[:, -1:].argmax(-1)
            steps[name].append(time.perf_counter() - start)
    return {name: {"prefill_s": state[name][0], "steps_s": steps[name]} for name in models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--n-kv-heads", type=int, help="key/value heads (grouped-query attention); default n_heads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="model weights and cache")
    parser.add_argument("--tapa-impl", default="auto", help="attention kernel of the TAPA model")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    rows = []
    print(
        f"# decoding, d_model {args.d_model}, {args.n_layers} layers, {args.n_heads} heads "
        f"({args.n_kv_heads or args.n_heads} key/value), batch 1, "
        f"{args.new_tokens} new tokens, {args.dtype}, TAPA impl {args.tapa_impl}, {torch.get_num_threads()} threads"
    )
    print("| context | TAPA prefill | RoPE prefill | TAPA tok/s | RoPE tok/s | TAPA / RoPE tok/s |")
    print("|---|---|---|---|---|---|")
    for context in args.contexts:
        models = {"tapa": make("tapa", args, context, args.tapa_impl), "rope": make("rope", args, context, "auto")}
        prompt = torch.randint(0, 256, (1, context))
        for _ in range(2):  # warm-up (kernel builds, allocator, thread pools)
            decode_interleaved(models, prompt[:, :64], 2)
        runs = [decode_interleaved(models, prompt, args.new_tokens) for _ in range(args.repeats)]
        prefill = {s: statistics.median(r[s]["prefill_s"] for r in runs) for s in models}
        steps = {s: [t for r in runs for t in r[s]["steps_s"]] for s in models}
        rate = {s: 1.0 / statistics.median(steps[s]) for s in models}
        # paired: RoPE's step time over TAPA's at the same step of the same repeat
        ratio = paired_ratio(steps["rope"], steps["tapa"])
        rows.append({"context": context, "prefill_s": prefill, "tokens_per_s": rate, "ratio": ratio, "steps_s": steps})
        print(
            f"| {context} | {prefill['tapa']:.3f} s | {prefill['rope']:.3f} s | {rate['tapa']:.1f} | "
            f"{rate['rope']:.1f} | {ratio:.2f} |",
            flush=True,
        )
    if args.json:
        meta = {
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "args": vars(args),
        }
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
