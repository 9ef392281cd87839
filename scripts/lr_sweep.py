"""Peak learning-rate sweep per positional scheme (how tapa.train.config.DEFAULT_LR was chosen).

Trains the same ~2M-parameter byte-level model on the default corpus for a fixed number of
steps at each (scheme, lr) and records the final validation bits per byte. Losses do not
depend on machine load (fixed steps, seeded), only the wall time does.

    python scripts/lr_sweep.py --out runs/lr_sweep --json docs/lr_sweep.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tapa.model import ModelConfig
from tapa.train.config import TrainConfig
from tapa.train.trainer import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", nargs="+", default=["tapa", "rope", "nope", "alibi"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 1e-3, 2e-3, 4e-3])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/lr_sweep")
    parser.add_argument("--json", default=None, help="write the results here (default: OUT/results.json)")
    args = parser.parse_args()

    results = []
    for scheme in args.schemes:
        for lr in args.lrs:
            run = Path(args.out) / f"{scheme}_lr{lr:g}"
            model = ModelConfig(d_model=192, n_layers=4, n_heads=4, max_seq_len=args.seq_len, positional=scheme)
            config = TrainConfig(
                out=str(run),
                seq_len=args.seq_len,
                batch_size=args.batch_size,
                steps=args.steps,
                lr=lr,
                seed=args.seed,
                eval_every=0,
                save_every=0,
                eval_segments=128,
                model=model,
            )
            resume = "latest" if (run / "train_config.json").exists() else None
            start = time.perf_counter()
            result = run_training(config, resume=resume, progress=False)
            row = {
                "scheme": scheme,
                "lr": lr,
                "val_bpb": result.val_bpb,
                "val_loss": result.val_loss,
                "final_train_loss": result.final_loss,
                "seconds": time.perf_counter() - start,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    best = {s: min((r for r in results if r["scheme"] == s), key=lambda r: r["val_bpb"])["lr"] for s in args.schemes}
    summary = {
        "command": "python scripts/lr_sweep.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in ("json",) and not isinstance(v, list)
        ),
        "model": "d_model 192, 4 layers, 4 heads, byte vocab (1.82M parameters)",
        "steps": args.steps,
        "tokens_per_run": args.steps * args.batch_size * args.seq_len,
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "results": results,
        "best_lr": best,
    }
    path = Path(args.json) if args.json else Path(args.out) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    print("best peak LR per scheme:", best)


if __name__ == "__main__":
    main()
