"""Perplexity of held-out documents at a given context length (sliding or non-overlapping
windows, see :mod:`tapa.evaluate.windows`), every target scored exactly once."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from tapa.evaluate.windows import Window, windows
from tapa.model import TapaLM


@dataclass
class PerplexityResult:
    length: int
    stride: int
    protocol: str
    nats: float
    tokens: int
    bytes: int
    windows: int
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.nats / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / math.log(2) / max(self.bytes, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss": self.loss, "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte}


@torch.no_grad()
def window_losses(model: TapaLM, tokens: torch.Tensor, group: Sequence[Window], device) -> list[torch.Tensor]:
    """Per-target losses (nats) of the scored part of each window; windows must share a length."""
    starts = torch.tensor([w.start for w in group])
    length = group[0].length
    rows = tokens[starts[:, None] + torch.arange(length + 1)].to(device)
    logits = model(rows[:, :-1])
    losses = F.cross_entropy(logits.flatten(0, 1).float(), rows[:, 1:].flatten(), reduction="none")
    losses = losses.view(len(group), length).cpu()
    return [losses[i, w.first_scored :] for i, w in enumerate(group)]


def evaluate_perplexity(
    model: TapaLM,
    documents: Sequence[torch.Tensor],
    length: int,
    stride: int,
    *,
    batch_size: int = 4,
    byte_count: Callable[[torch.Tensor], int] | None = None,
    on_window: Callable[[int, float, int], None] | None = None,
    protocol: str = "sliding",
) -> PerplexityResult:
    """Score every target of every document once with windows of ``length`` tokens.

    ``byte_count(target_ids)`` gives the UTF-8 size of scored tokens (for bits per byte);
    ``on_window(n_windows, nats, tokens)`` is called after each batch (progress bars).
    """
    device = next(model.parameters()).device
    model.eval()
    nats, scored, n_bytes, n_windows = 0.0, 0, 0, 0
    for doc in documents:
        doc = doc.long()
        plan = windows(len(doc), length, stride)
        by_length: dict[int, list[Window]] = {}
        for w in plan:
            by_length.setdefault(w.length, []).append(w)
        for group in by_length.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i : i + batch_size]
                for w, losses in zip(chunk, window_losses(model, doc, chunk, device), strict=True):
                    nats += float(losses.double().sum())
                    scored += losses.numel()
                    if byte_count is not None:
                        n_bytes += byte_count(doc[w.start + 1 + w.first_scored : w.end + 1])
                n_windows += len(chunk)
                if on_window is not None:
                    on_window(n_windows, nats, scored)
    return PerplexityResult(length, stride, protocol, nats, scored, n_bytes, n_windows)
