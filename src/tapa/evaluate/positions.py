"""Mean loss at each position of long windows, bucketed on a log scale: where a model
breaks past its training length shows as a rise after the training-length marker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tapa.model import TapaLM


@dataclass
class PositionLoss:
    length: int
    sums: np.ndarray  # (length,) summed loss (nats) of targets at window position i (i + 1 tokens of context)
    counts: np.ndarray  # (length,) how many targets each position rests on

    def mean(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1)

    def buckets(self) -> list[dict]:
        """Log-2 buckets of positions [1, 2), [2, 4), [4, 8), ... (1-based: context size)."""
        out = []
        lo = 1
        while lo <= self.length:
            hi = min(2 * lo, self.length + 1)
            s, c = self.sums[lo - 1 : hi - 1].sum(), self.counts[lo - 1 : hi - 1].sum()
            out.append({"from": lo, "to": hi - 1, "loss": float(s / max(c, 1)), "targets": int(c)})
            lo = hi
        return out


@torch.no_grad()
def position_losses(model: TapaLM, documents: Sequence[torch.Tensor], length: int, batch_size: int = 4) -> PositionLoss:
    """Non-overlapping full windows of ``length`` tokens from each document."""
    device = next(model.parameters()).device
    model.eval()
    sums, counts = np.zeros(length), np.zeros(length, dtype=np.int64)
    rows = [doc[s : s + length + 1] for doc in documents for s in range(0, len(doc) - length, length)]
    for i in range(0, len(rows), batch_size):
        block = torch.stack(rows[i : i + batch_size]).long().to(device)
        logits = model(block[:, :-1])
        losses = F.cross_entropy(logits.flatten(0, 1).float(), block[:, 1:].flatten(), reduction="none")
        losses = losses.view(block.shape[0], length).double().cpu().numpy()
        sums += losses.sum(0)
        counts += block.shape[0]
    return PositionLoss(length, sums, counts)


def plot_position_losses(curves: dict[str, PositionLoss], training_length: int | None, path, title: str) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, curve in curves.items():
        buckets = curve.buckets()
        centres = [np.sqrt(b["from"] * max(b["to"], b["from"])) for b in buckets]
        ax.plot(centres, [b["loss"] for b in buckets], marker="o", label=label)
    if training_length:
        ax.axvline(training_length, color="grey", linestyle="--", label=f"training length ({training_length})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position in window = tokens of context (log scale, power-of-2 buckets)")
    ax.set_ylabel("mean loss (nats per token)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
