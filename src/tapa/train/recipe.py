"""The optimisation recipe every training loop in tapa uses (the trainer, the passkey
fine-tune, the recall study, the demo), in one place:

- AdamW with the paper's betas (0.9, 0.95), eps 1e-8 and no weight decay by default;
- linear warmup then cosine decay to ``min_ratio`` x peak (:class:`WarmupCosine`), stepped
  once per optimizer step;
- one update: clip the global gradient norm (0 = no clipping), step the optimizer and the
  schedule, clear the gradients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from tapa.train.schedule import WarmupCosine

BETAS = (0.9, 0.95)
EPS = 1e-8


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    *,
    betas: tuple[float, float] = BETAS,
    eps: float = EPS,
    weight_decay: float = 0.0,
) -> torch.optim.AdamW:
    """AdamW over ``params`` at peak LR ``lr``."""
    return torch.optim.AdamW(list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def make_schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """LR multiplier (i + 1) / warmup for i < warmup, then min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2
    with p the progress from warmup to ``total`` (clamped at 1: min_ratio after ``total``)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total, min_ratio))


def set_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, warmup: int, total: int, min_ratio: float) -> None:
    """After ``scheduler.load_state_dict`` (which restores the saved schedule's fields): this
    schedule instead, and the optimizer's LR recomputed for the resume step (unchanged when the
    schedule is the saved one)."""
    schedule = WarmupCosine(warmup, total, min_ratio)
    scheduler.lr_lambdas = [schedule]
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base * schedule(scheduler.last_epoch)


def update(
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    clip: float = 1.0,
) -> torch.Tensor:
    """One optimizer update after the backward pass(es): clip the global gradient norm to
    ``clip`` (0 disables), step the optimizer and the schedule, clear the gradients. Returns
    the gradient norm before clipping (a DTensor under FSDP: the caller gathers it)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
