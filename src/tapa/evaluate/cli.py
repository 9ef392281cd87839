"""``tapa eval-ppl``: perplexity by context length for any checkpoint."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import torch

from tapa.errors import ConfigError
from tapa.evaluate.passkey import N_CANDIDATES
from tapa.evaluate.windows import PROTOCOLS
from tapa.utils.files import atomic_write_text


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def add_scaling_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--pi", type=float, help="inference-time position interpolation factor (RoPE only)")
    group.add_argument("--yarn", type=float, help="inference-time YaRN factor (RoPE only)")
    group.add_argument("--ntk", type=float, help="inference-time NTK-aware factor (RoPE only)")
    group.add_argument("--dynamic", type=float, help="inference-time dynamic NTK factor (RoPE only)")


def add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="books", help="'books' (default) or your corpus (file, directory, hf:NAME)")
    parser.add_argument("--split", help="held-out split (default: test for the books, validation otherwise)")
    parser.add_argument("--cache-dir", help="token cache directory")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--no-progress", action="store_true")


def heldout_split(args: argparse.Namespace) -> str:
    """The split evaluated: --split, else the test book for the default corpus, else validation."""
    return args.split or ("test" if args.data == "books" else "validation")


def load_for_eval(args: argparse.Namespace, context: str):
    """The checkpoint's model (with any inference-time RoPE override), tokenizer and device."""
    from tapa.data.tokenizer import load_checkpoint_tokenizer
    from tapa.model import load_config, load_pretrained
    from tapa.model.scaling import scaled_model_config, with_config
    from tapa.utils.device import pick_device

    config = load_config(args.checkpoint)
    scaled = scaled_model_config(
        config, config.max_seq_len, pi=args.pi, yarn=args.yarn, ntk=args.ntk, dynamic=args.dynamic, context=context
    )
    model = with_config(load_pretrained(args.checkpoint), scaled)
    tokenizer = load_checkpoint_tokenizer(args.checkpoint)
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(
            f"{context}: the checkpoint's tokenizer has {tokenizer.vocab_size} ids but its model only "
            f"{config.vocab_size}; save the tokenizer the model was trained with beside it"
        )
    device = pick_device(args.device)
    return model.to(device).eval(), tokenizer, device


def scaling_label(args: argparse.Namespace) -> str | None:
    for name in ("pi", "yarn", "ntk", "dynamic"):
        if getattr(args, name) is not None:
            return f"{name} x{getattr(args, name):g}"
    return None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ppl = sub.add_parser("eval-ppl", help="perplexity at several context lengths (sliding window or non-overlapping)")
    ppl.add_argument("checkpoint", help="a model directory")
    ppl.add_argument("--lengths", type=positive_int, nargs="+", help="context lengths (default: 1/2x..16x training)")
    ppl.add_argument("--stride", type=positive_int, help="sliding-window stride (default: a quarter of each length)")
    ppl.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="sliding")
    ppl.add_argument("--max-tokens", type=positive_int, default=32768, help="held-out tokens scored per length")
    ppl.add_argument("--out", required=True, help="directory for results.json")
    add_scaling_flags(ppl)
    add_data_flags(ppl)
    ppl.set_defaults(func=run_eval_ppl)

    pos = sub.add_parser("eval-positions", help="mean loss by position in long windows, with a log-scale plot")
    pos.add_argument("checkpoint", help="a model directory")
    pos.add_argument("--length", type=positive_int, help="window length (default: 8x the training length)")
    pos.add_argument("--max-tokens", type=positive_int, default=65536, help="held-out tokens to read")
    pos.add_argument("--out", required=True, help="directory for positions.json and positions.png")
    add_scaling_flags(pos)
    add_data_flags(pos)
    pos.set_defaults(func=run_eval_positions)

    key = sub.add_parser("passkey", help="passkey retrieval accuracy on a grid of length x depth, with a heatmap")
    key.add_argument("checkpoint", help="a model directory")
    key.add_argument(
        "--lengths", type=positive_int, nargs="+", help="prompt lengths (default: 1x, 2x, 4x, 8x training)"
    )
    key.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    key.add_argument("--trials", type=positive_int, default=10, help="keys per cell")
    key.add_argument("--filler", choices=["books", "grass"], default="books")
    key.add_argument("--n-candidates", type=positive_int, default=N_CANDIDATES, help="keys ranked by log-likelihood")
    key.add_argument("--seed", type=int, default=0)
    key.add_argument("--out", required=True, help="directory for passkey.json and passkey.png")
    add_scaling_flags(key)
    key.add_argument("--device", default="auto")
    key.add_argument("--no-progress", action="store_true")
    key.set_defaults(func=run_passkey)

    tune = sub.add_parser("passkey-finetune", help="teach a model the passkey task at its training length only")
    tune.add_argument("checkpoint", help="a model directory")
    tune.add_argument("--out", required=True, help="where to save the fine-tuned model")
    tune.add_argument("--steps", type=positive_int, default=300)
    tune.add_argument("--batch-size", type=positive_int, default=8)
    tune.add_argument("--lr", type=float, help="peak LR (default: the scheme's pretraining default)")
    tune.add_argument("--length", type=positive_int, help="prompt length (default: the training length)")
    tune.add_argument("--filler", choices=["books", "grass"], default="books")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--no-progress", action="store_true")
    tune.set_defaults(func=run_passkey_finetune)


def run_eval_ppl(args: argparse.Namespace) -> dict[str, Any]:
    """Parse, load, then :func:`tapa.evaluate.sweep.perplexity_sweep`; write OUT/results.json."""
    from tapa.evaluate.heldout import heldout_documents
    from tapa.evaluate.sweep import check_lengths_fit, perplexity_sweep, sweep_plan

    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    model, tokenizer, device = load_for_eval(args, "eval-ppl")
    train_len = model.config.max_seq_len
    lengths = args.lengths or [train_len // 2 * 2**i for i in range(6)]
    plans = sweep_plan(lengths, protocols, args.stride)
    split = heldout_split(args)
    docs = heldout_documents(tokenizer, args.data, split, args.max_tokens, args.cache_dir)
    check_lengths_fit(lengths, docs, f"the {split} split of {args.data}", args.max_tokens)
    out = Path(args.out)
    if not args.no_progress:
        print(f"{model.describe()}; {sum(len(d) for d in docs):,} held-out tokens ({args.data}/{split})")
    rows = perplexity_sweep(model, docs, tokenizer, plans, args.batch_size, progress=not args.no_progress)
    report = {
        "checkpoint": str(args.checkpoint),
        "model": model.config.to_dict(),
        "training_length": train_len,
        "inference_scaling": scaling_label(args),
        "data": {"source": args.data, "split": split, "max_tokens": args.max_tokens},
        "environment": {"torch": torch.__version__, "device": str(device), "machine": platform.machine()},
        "results": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(report, indent=1) + "\n")
    print(format_table(rows, train_len))
    print(f"results in {out / 'results.json'}")
    return report


def format_table(rows: list[dict[str, Any]], train_len: int) -> str:
    lines = [
        "| length | x train | protocol | stride | perplexity | bits/byte | tokens scored | windows | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['length']} | {r['length'] / train_len:g} | {r['protocol']} | {r['stride']} | {r['perplexity']:.4f} "
            f"| {r['bits_per_byte']:.4f} | {r['tokens']:,} | {r['windows']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def run_eval_positions(args: argparse.Namespace) -> dict[str, Any]:
    from tapa.evaluate.heldout import heldout_documents
    from tapa.evaluate.positions import plot_position_losses, position_losses

    model, tokenizer, _ = load_for_eval(args, "eval-positions")
    train_len = model.config.max_seq_len
    length = args.length or 8 * train_len
    split = heldout_split(args)
    docs = heldout_documents(tokenizer, args.data, split, args.max_tokens, args.cache_dir)
    if not any(len(d) > length for d in docs):
        raise ConfigError(
            f"eval-positions: no held-out document has more than {length} tokens within --max-tokens "
            f"{args.max_tokens}; raise --max-tokens or lower --length"
        )
    curve = position_losses(model, docs, length, args.batch_size)
    label = f"{model.config.positional}" + (f" ({scaling_label(args)})" if scaling_label(args) else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(args.checkpoint),
        "label": label,
        "length": length,
        "training_length": train_len,
        "windows": int(curve.counts[0]),
        "data": {"source": args.data, "split": split, "max_tokens": args.max_tokens},
        "buckets": curve.buckets(),
        "mean_loss_by_position": curve.mean().tolist(),
    }
    (out / "positions.json").write_text(json.dumps(report, indent=1) + "\n")
    plot_position_losses({label: curve}, train_len, out / "positions.png", f"Loss by position, {args.checkpoint}")
    print("| positions | mean loss (nats) | targets |\n|---|---|---|")
    for b in report["buckets"]:
        print(f"| {b['from']}-{b['to']} | {b['loss']:.4f} | {b['targets']:,} |")
    print(f"results in {out / 'positions.json'} and {out / 'positions.png'}")
    return report


def run_passkey(args: argparse.Namespace) -> dict[str, Any]:
    from tapa.evaluate.passkey import KEY_DIGITS, passkey_grid, plot_passkey

    for depth in args.depths:
        if not 0 <= depth <= 1:
            raise ConfigError(f"passkey: depths must be in [0, 1], got {depth}")
    n_keys = 9 * 10 ** (KEY_DIGITS - 1)  # keys have KEY_DIGITS digits, no leading zero
    if not 2 <= args.n_candidates <= n_keys:
        raise ConfigError(
            f"passkey: --n-candidates {args.n_candidates} must be in [2, {n_keys}] (the true key ranked among "
            f"that many {KEY_DIGITS}-digit keys)"
        )
    model, tokenizer, _ = load_for_eval(args, "passkey")
    train_len = model.config.max_seq_len
    lengths = args.lengths or [train_len * f for f in (1, 2, 4, 8)]
    longest = max(lengths)
    note = "" if longest <= 16 * train_len else "; far past the training length, each prompt is slow: Ctrl-C stops"
    print(
        f"passkey: {len(lengths) * len(args.depths) * args.trials} prompts ({len(lengths)} lengths x "
        f"{len(args.depths)} depths x {args.trials} keys), up to {longest:,} tokens = {longest / train_len:g}x the "
        f"training length {train_len}{note}",
        flush=True,
    )
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(lengths) * len(args.depths), unit="cell", desc="passkey", dynamic_ncols=True)
    cells = passkey_grid(
        model,
        tokenizer,
        lengths,
        args.depths,
        args.trials,
        args.filler,
        args.seed,
        args.n_candidates,
        on_cell=(lambda cell: bar.update(1)) if bar is not None else None,
    )
    if bar is not None:
        bar.close()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(args.checkpoint),
        "training_length": train_len,
        "inference_scaling": scaling_label(args),
        "filler": args.filler,
        "trials_per_cell": args.trials,
        "n_candidates": args.n_candidates,
        "seed": args.seed,
        "cells": cells,
    }
    (out / "passkey.json").write_text(json.dumps(report, indent=1) + "\n")
    title = f"Passkey retrieval, {model.config.positional}, trained at {train_len} ({args.trials} keys per cell)"
    plot_passkey(cells, train_len, out / "passkey.png", title, args.n_candidates)
    print("| length | depth | greedy | candidates |\n|---|---|---|---|")
    for c in cells:
        print(f"| {c['length']} | {c['depth']:.0%} | {c['greedy']:.0%} | {c['candidates']:.0%} |")
    print(f"results in {out / 'passkey.json'} and {out / 'passkey.png'}")
    return report


def run_passkey_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from tapa.evaluate.passkey_finetune import passkey_finetune

    out = Path(args.out)  # an --out holding a model is refused by tapa.cli_checks before this runs
    result = passkey_finetune(
        args.checkpoint,
        out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        length=args.length,
        filler=args.filler,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(
        f"passkey fine-tune: {result['steps']} steps at length {result['length']}, final answer loss "
        f"{result['final_answer_loss']:.3f} nats/token (without retrieval: {result['no_retrieval_loss']:.3f}); "
        f"saved in {out}/"
    )
    return result
