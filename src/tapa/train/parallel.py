"""How a run spreads over processes: one :class:`Parallel` strategy per ``--parallel`` mode.

The training loop asks its strategy, and never branches on the mode itself, for:

- ``build``: the model (initialised, ``init_from`` loaded, or a checkpoint's weights);
- ``wrap``: the module the forward pass runs through (DDP's wrapper, or the model itself);
- ``autocast``: the bf16 context (FSDP casts through its mixed-precision policy instead);
- ``micro_batch``: the context of one micro-batch's forward/backward (gradient sync only
  after the last one);
- ``load_optimizer`` / ``save``: the optimizer state and checkpoints (full, or sharded);
- ``full_model``: the final weights as a plain model (gathered on rank 0 under FSDP);
- ``grad_norm``: the clipped-gradient norm as a plain tensor.

:class:`Single` is one process; :class:`Replicated` (DDP) keeps a full copy per rank and
averages gradients; :class:`Sharded` (FSDP2) shards parameters, gradients and optimizer
state (:mod:`tapa.train.fsdp`). :func:`strategy` picks one from the config and the
process group.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from tapa.errors import CheckpointError, ConfigError
from tapa.model import TapaLM, load_pretrained, save_pretrained
from tapa.train.checkpoints import save_checkpoint
from tapa.train.config import TrainConfig
from tapa.train.distributed import DistEnv, barrier


class Single:
    """One process, the whole model: plain checkpoints on rank 0 (the only rank)."""

    def __init__(self, config: TrainConfig, env: DistEnv) -> None:
        self.config, self.env = config, env

    def build(self, make_model, state: dict | None, checkpoint: Path | None) -> TapaLM:
        """``make_model()`` builds the fresh (or ``init_from``) model; on resume the checkpoint's
        weights replace it."""
        model = make_model()
        if state is not None:
            if state.get("format") is not None:
                raise CheckpointError(f"resume: {checkpoint} is a sharded checkpoint; resume with --parallel fsdp")
            try:
                model.load_state_dict(load_pretrained(checkpoint).state_dict())
            except RuntimeError as err:
                raise CheckpointError(
                    f"checkpoint: {checkpoint} does not fit this run's model ({str(err)[:80]})"
                ) from None
        return model

    def wrap(self, model: TapaLM) -> torch.nn.Module:
        return model

    def autocast(self):
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.env.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def micro_batch(self, model: TapaLM, wrapped: torch.nn.Module, last: bool):
        return nullcontext()

    def load_optimizer(self, checkpoint: Path, state: dict, model: TapaLM, optimizer) -> None:
        optimizer.load_state_dict(state["optimizer"])

    def save(
        self,
        out: Path,
        step: int,
        model: TapaLM,
        optimizer,
        save_tokenizer,
        trainer_state: dict[str, Any],
        keep_last: int,
    ) -> None:
        if self.env.is_main:
            save_checkpoint(
                out, step, model, save_tokenizer, {**trainer_state, "optimizer": optimizer.state_dict()}, keep_last
            )
        barrier(self.env)

    def full_model(self, model: TapaLM) -> TapaLM | None:
        return model

    def save_final(self, model: TapaLM, out: Path) -> None:
        final = self.full_model(model)
        if self.env.is_main:
            save_pretrained(final, out)
        barrier(self.env)

    def grad_norm(self, norm: torch.Tensor) -> torch.Tensor:
        return norm


class Replicated(Single):
    """DDP: a full copy per rank, gradients averaged in backward (not after every micro-batch)."""

    def wrap(self, model: TapaLM) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def micro_batch(self, model: TapaLM, wrapped: torch.nn.Module, last: bool):
        return nullcontext() if last else wrapped.no_sync()


class Sharded(Single):
    """FSDP2: parameters, gradients and optimizer state sharded over the ranks."""

    def build(self, make_model, state: dict | None, checkpoint: Path | None) -> TapaLM:
        from tapa.train import fsdp as sharding

        if state is not None and state.get("format") != sharding.FORMAT:
            raise CheckpointError(
                f"resume: {checkpoint} was not written by --parallel fsdp; resume with its --parallel"
            )
        config = self.config
        init = config.init_from if state is None else None
        return sharding.build_sharded(config.model, config.seed, self.env.device, config.precision, init, self.env.rank)

    def autocast(self):
        return nullcontext()  # the mixed-precision policy casts

    def micro_batch(self, model: TapaLM, wrapped: torch.nn.Module, last: bool):
        model.set_requires_gradient_sync(last)  # reduce-scatter only after the last micro-batch
        return nullcontext()

    def load_optimizer(self, checkpoint: Path, state: dict, model: TapaLM, optimizer) -> None:
        from tapa.train import fsdp as sharding

        sharding.load_sharded(checkpoint, model, optimizer)

    def save(
        self,
        out: Path,
        step: int,
        model: TapaLM,
        optimizer,
        save_tokenizer,
        trainer_state: dict[str, Any],
        keep_last: int,
    ) -> None:
        from tapa.train import fsdp as sharding

        sharding.save_sharded(
            out,
            step,
            model,
            optimizer,
            save_tokenizer,
            {**trainer_state, "world": self.env.world},
            keep_last,
            self.env.rank,
        )

    def full_model(self, model: TapaLM) -> TapaLM | None:
        from tapa.train import fsdp as sharding

        return sharding.full_model(model)  # gathered on rank 0 (every rank calls it)

    def grad_norm(self, norm: torch.Tensor) -> torch.Tensor:
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor


def check_launch(config: TrainConfig, under_torchrun: bool) -> None:
    """FSDP needs a process group, so it runs under torchrun even on one process."""
    if config.parallel == "fsdp" and not under_torchrun:
        raise ConfigError(
            "parallel: fsdp runs under torchrun (torchrun --nproc-per-node N -m tapa.cli train ...); "
            "drop --parallel fsdp for one process"
        )


def needs_group(config: TrainConfig) -> bool:
    """Whether the run needs a process group even with one rank (FSDP's mesh does)."""
    return config.parallel == "fsdp"


def strategy(config: TrainConfig, env: DistEnv) -> Single:
    """The strategy for ``config.parallel`` in this process group."""
    if config.parallel == "fsdp":
        return Sharded(config, env)
    return Replicated(config, env) if env.enabled else Single(config, env)
