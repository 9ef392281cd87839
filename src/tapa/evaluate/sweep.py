"""Perplexity over a grid of context lengths and window protocols: the work behind
``tapa eval-ppl``, callable from Python::

    from tapa.evaluate.sweep import perplexity_sweep, sweep_plan
    plans = sweep_plan([256, 512, 1024], ["sliding"], stride=None)
    rows = perplexity_sweep(model, docs, tokenizer, plans, batch_size=4)

Each row is :meth:`PerplexityResult.to_dict` (length, protocol, stride, perplexity, loss,
bits per byte, tokens, windows, seconds).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from tapa.data.tokenizer import Tokenizer
from tapa.errors import ConfigError
from tapa.evaluate.perplexity import evaluate_perplexity
from tapa.evaluate.windows import check_window, windows
from tapa.model import TapaLM


def sweep_plan(lengths: Sequence[int], protocols: Sequence[str], stride: int | None) -> list[tuple[int, str, int]]:
    """(length, protocol, stride) for each cell: non-overlapping windows step by their length,
    sliding ones by ``stride`` (default length / 4). Each stride is checked against its window."""
    plans = []
    for length in lengths:
        for protocol in protocols:
            step = length if protocol == "non-overlapping" else stride or max(1, length // 4)
            check_window(length, step)
            plans.append((length, protocol, step))
    return plans


def check_lengths_fit(lengths: Sequence[int], docs: Sequence[torch.Tensor], source: str, max_tokens: int) -> None:
    """Some document holds tokens and every length fits in the longest one (a longer window
    would be reported as if measured at that length). ``source`` names the documents, read
    up to ``max_tokens``."""
    if not docs:
        raise ConfigError(f"eval-ppl: {source} holds no tokens")
    longest = max(len(d) for d in docs)
    too_long = [length for length in lengths if length > longest]
    if too_long:
        raise ConfigError(
            f"eval-ppl: --lengths {too_long[0]} is longer than the longest held-out document "
            f"({longest} tokens within --max-tokens {max_tokens}); raise --max-tokens or drop "
            "that length"
        )


def perplexity_sweep(
    model: TapaLM,
    docs: Sequence[torch.Tensor],
    tokenizer: Tokenizer,
    plans: Sequence[tuple[int, str, int]],
    batch_size: int = 4,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """One row per plan: perplexity, loss and bits per byte (bytes of the scored text under
    ``tokenizer``), with a progress bar per cell when ``progress``."""

    def byte_count(ids: torch.Tensor) -> int:
        return len(tokenizer.decode(ids).encode("utf-8"))

    rows = []
    for length, protocol, stride in plans:
        bar = _bar(docs, length, stride, protocol) if progress else None

        def on_window(n: int, nats: float, tokens: int, bar=bar) -> None:
            if bar is not None:
                bar.n = n
                bar.set_postfix(ppl=f"{torch.tensor(nats / max(tokens, 1)).exp().item():.3f}", refresh=True)

        start = time.perf_counter()
        result = evaluate_perplexity(
            model,
            docs,
            length,
            stride,
            batch_size=batch_size,
            byte_count=byte_count,
            on_window=on_window,
            protocol=protocol,
        )
        result.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        rows.append(result.to_dict())
    return rows


def _bar(docs: Sequence[torch.Tensor], length: int, stride: int, protocol: str):
    from tqdm.auto import tqdm

    total = sum(len(windows(len(d), length, stride)) for d in docs)
    return tqdm(total=total, desc=f"L={length} {protocol}", unit="win", dynamic_ncols=True, leave=False)
