"""Decoding throughput: tokens/s of KV-cache generation after a long prompt, TAPA vs RoPE.

For each context length C, a TAPA model and a RoPE model of the same size each prefill a
C-token prompt and then decode N tokens one at a time (greedy, through the KV cache). It
reports the prefill time and the decoding tokens/s, medians of repeats with the schemes
interleaved, and the ratio TAPA / RoPE from the same run.

    python benchmarks/decoding.py                          # C = 2K, 4K, 8K, 16K; 32 new tokens
    python benchmarks/decoding.py --contexts 2048 --new-tokens 64 --tapa-impl chunked
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from tapa.model import ModelConfig, TapaLM


def make(positional: str, args: argparse.Namespace, context: int, impl: str) -> TapaLM:
    torch.manual_seed(0)
    config = ModelConfig(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        max_seq_len=context + args.new_tokens,
        positional=positional,
        attn_impl=impl if positional == "tapa" else "auto",
    )
    return TapaLM(config).eval()


@torch.no_grad()
def run(model: TapaLM, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decoding seconds for new_tokens tokens)."""
    cache = model.new_cache()
    start = time.perf_counter()
    logits = model(prompt, cache)
    prefill = time.perf_counter() - start
    token = logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = model(token, cache)[:, -1:].argmax(-1)
    return prefill, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", nargs="+", type=int, default=[2048, 4096, 8192, 16384])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tapa-impl", default="auto", help="attention kernel of the TAPA model")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    rows = []
    print(
        f"# decoding, d_model {args.d_model}, {args.n_layers} layers, {args.n_heads} heads, batch 1, "
        f"{args.new_tokens} new tokens, TAPA impl {args.tapa_impl}, {torch.get_num_threads()} threads"
    )
    print("| context | TAPA prefill | RoPE prefill | TAPA tok/s | RoPE tok/s | TAPA / RoPE tok/s |")
    print("|---|---|---|---|---|---|")
    for context in args.contexts:
        models = {"tapa": make("tapa", args, context, args.tapa_impl), "rope": make("rope", args, context, "auto")}
        prompt = torch.randint(0, 256, (1, context))
        for model in models.values():  # warm-up
            run(model, prompt[:, :64], 2)
        times: dict[str, list[tuple[float, float]]] = {s: [] for s in models}
        for _ in range(args.repeats):
            for scheme, model in models.items():
                times[scheme].append(run(model, prompt, args.new_tokens))
        prefill = {s: statistics.median(t[0] for t in v) for s, v in times.items()}
        rate = {s: args.new_tokens / statistics.median(t[1] for t in v) for s, v in times.items()}
        ratio = rate["tapa"] / rate["rope"]
        rows.append({"context": context, "prefill_s": prefill, "tokens_per_s": rate, "ratio": ratio})
        print(
            f"| {context} | {prefill['tapa']:.3f} s | {prefill['rope']:.3f} s | {rate['tapa']:.1f} | "
            f"{rate['rope']:.1f} | {ratio:.2f} |",
            flush=True,
        )
    if args.json:
        meta = {
            "machine": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "args": vars(args),
        }
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
