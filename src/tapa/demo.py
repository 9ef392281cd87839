"""``tapa demo``: train a tiny TAPA language model on the embedded books for a fixed
wall-clock budget, report validation bits per byte, save it and generate text.

This is the largest end-to-end run the foundation supports; the full training pipeline
(``tapa train``) and the reproduction (``tapa reproduce``) build on the same pieces.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from tapa.data import ByteTokenizer, load_split
from tapa.model import ModelConfig, TapaLM, save_pretrained
from tapa.train.recipe import make_optimizer, update
from tapa.utils.publish import publish


def _stream(split: str, tok: ByteTokenizer) -> torch.Tensor:
    return torch.cat([tok.encode_tensor(book) for book in load_split(split)])


def _batch(data: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, data.numel() - length - 1, (batch,), generator=gen)
    rows = torch.stack([data[s : s + length + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate_bpb(model: TapaLM, data: torch.Tensor, length: int, n_windows: int = 32) -> float:
    """Mean bits per byte over ``n_windows`` evenly spaced, non-overlapping windows."""
    model.eval()
    stride = (data.numel() - length - 1) // n_windows
    rows = torch.stack([data[i * stride : i * stride + length + 1] for i in range(n_windows)])
    losses = [model.loss(rows[i : i + 8, :-1], rows[i : i + 8, 1:]) for i in range(0, n_windows, 8)]
    model.train()
    return float(torch.stack(losses).mean()) / math.log(2)


def run_demo(
    out: str | Path = "runs/demo",
    seconds: float = 60.0,
    positional: str = "tapa",
    seq_len: int = 128,
    batch: int = 16,
    lr: float = 1e-3,
    warmup_steps: int = 30,
    seed: int = 0,
    prompt: str = "It is a truth universally acknowledged",
) -> dict[str, float | str]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tok = ByteTokenizer()
    train, val = _stream("train", tok), _stream("validation", tok)
    config = ModelConfig(
        vocab_size=tok.vocab_size, d_model=128, n_layers=4, n_heads=4, max_seq_len=seq_len, positional=positional
    )
    model = TapaLM(config)
    print(model.describe())
    print(f"training on {train.numel():,} bytes (5 books) for {seconds:.0f} s, sequences of {seq_len} bytes")
    params = list(model.parameters())
    opt = make_optimizer(params, lr)  # its schedule runs on the wall clock, set by hand below
    start, step, tokens = time.perf_counter(), 0, 0
    while (elapsed := time.perf_counter() - start) < seconds:
        # paper schedule, on the wall clock: linear warmup, then cosine decay to 0.1 x peak
        progress = min(1.0, elapsed / seconds)
        scale = min(1.0, (step + 1) / warmup_steps) * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        x, y = _batch(train, batch, seq_len, gen)
        loss = model.loss(x, y)
        loss.backward()
        update(params, opt, None, clip=1.0)
        step, tokens = step + 1, tokens + x.numel()
        if step % 25 == 0:
            elapsed = time.perf_counter() - start
            print(
                f"step {step:5d}  loss {loss.item():.3f}  lr {lr * scale:.2e}  {tokens / elapsed:,.0f} tok/s  "
                f"{elapsed:5.1f} s"
            )
    elapsed = time.perf_counter() - start
    bpb = evaluate_bpb(model, val, seq_len)
    print(f"validation (Northanger Abbey): {bpb:.3f} bits per byte after {step} steps, {tokens:,} tokens")
    path = publish(Path(out), lambda staging: save_pretrained(model, staging))  # all files or none
    print(f"saved checkpoint to {path}/")
    ids = torch.tensor([tok.encode(prompt)])
    sample = model.eval().generate(ids, 200, temperature=0.8, top_k=40, generator=torch.Generator().manual_seed(seed))
    text = tok.decode(sample[0])
    print("--- sample (temperature 0.8, top-k 40) ---")
    print(text)
    print("---")
    return {"steps": step, "tokens": tokens, "seconds": elapsed, "val_bpb": bpb, "sample": text}
