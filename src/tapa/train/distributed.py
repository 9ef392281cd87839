"""Process-group setup for ``torchrun``: DDP over gloo on CPU, NCCL on GPU; a no-op alone.

``--parallel fsdp`` shards the model with FSDP2 instead (tapa.train.fsdp).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from tapa.utils.device import pick_device


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    grouped: bool = False  # a process group exists (world > 1, or FSDP on one process)

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(preference: str = "auto", group_always: bool = False) -> DistEnv:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the group
    (also for one process when ``group_always``: FSDP needs a group even on one GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(preference)
    if world <= 1 and not (group_always and "RANK" in os.environ):
        return DistEnv(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world=world, device=device, grouped=True)


def mean_across_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= env.world
    return value


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.grouped and dist.is_initialized():
        dist.destroy_process_group()
