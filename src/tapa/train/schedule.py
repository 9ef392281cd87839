"""The paper's learning-rate schedule: linear warmup, then cosine decay to ``min_ratio`` x peak."""

from __future__ import annotations

import math


class WarmupCosine:
    """Multiplier of the peak LR for optimizer step ``i`` (0-based), for ``torch.optim.lr_scheduler.LambdaLR``."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.1) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, i: int) -> float:
        if i < self.warmup:
            return (i + 1) / self.warmup
        progress = min(1.0, (i - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
