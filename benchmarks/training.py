"""Training throughput: tokens per second of a full training step (forward, backward,
gradient clipping, AdamW) for a TAPA model and a RoPE model of the same size at the same
length, and their ratio, measured in one run with the schemes interleaved.

    python benchmarks/training.py                              # ~2M-param byte model, L = 256, 1024
    python benchmarks/training.py --lengths 256 --repeats 9 --json out.json
    python benchmarks/training.py --head-dim 128 --d-model 256 --lengths 512 2048
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from timing import machine

from tapa.model import ModelConfig, TapaLM


def make(positional: str, args: argparse.Namespace, length: int, device: torch.device):
    torch.manual_seed(0)
    n_heads = args.d_model // args.head_dim if args.head_dim else args.n_heads
    config = ModelConfig(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=n_heads,
        max_seq_len=length,
        positional=positional,
        attn_impl=args.tapa_impl if positional == "tapa" else "auto",
    )
    model = TapaLM(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    batch = max(1, args.tokens_per_step // length)
    x = torch.randint(0, 256, (batch, length), device=device)

    def step() -> None:
        loss = model.loss(x, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return model, step, batch * length


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--schemes", nargs="+", default=["tapa", "rope"])
    parser.add_argument("--tokens-per-step", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, help="sets the heads to d_model / head_dim (overrides --n-heads)")
    parser.add_argument("--tapa-impl", default="auto", help="attention kernel of the TAPA model")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    head_dim = args.head_dim or args.d_model // args.n_heads
    print(
        f"# training tokens/s, d_model {args.d_model}, {args.n_layers} layers, head_dim {head_dim}, "
        f"{args.tokens_per_step} tokens/step, TAPA impl {args.tapa_impl}, {device}, {torch.get_num_threads()} threads"
    )
    print(f"| L | {' | '.join(f'{s} tok/s' for s in args.schemes)} | {args.schemes[0]} / {args.schemes[-1]} |")
    print("|---" * (len(args.schemes) + 2) + "|")
    for length in args.lengths:
        runs = {s: make(s, args, length, device) for s in args.schemes}
        for _, step, _ in runs.values():  # warm-up
            step()
        times: dict[str, list[float]] = {s: [] for s in args.schemes}
        for _ in range(args.repeats):  # interleaved, so machine noise hits every scheme alike
            for scheme, (_, step, _) in runs.items():
                start = time.perf_counter()
                step()
                times[scheme].append(time.perf_counter() - start)
        rate = {s: runs[s][2] / statistics.median(times[s]) for s in args.schemes}
        ratio = rate[args.schemes[0]] / rate[args.schemes[-1]]
        params = runs[args.schemes[0]][0].num_parameters()
        rows.append({"length": length, "tokens_per_s": rate, "ratio": ratio, "parameters": params})
        print(f"| {length} | {' | '.join(f'{rate[s]:,.0f}' for s in args.schemes)} | {ratio:.2f} |")
    if args.json:
        meta = {
            "machine": machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(device),
            "args": vars(args),
        }
        with open(args.json, "w") as handle:
            json.dump({"meta": meta, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
