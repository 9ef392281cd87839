"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for ``tapa train --parallel fsdp``.

- **Built on the meta device, materialised sharded.** Every block, then the root, is
  sharded before any weight exists; ``to_empty`` allocates only each rank's shard. Fresh
  weights follow :meth:`TapaLM.reset_parameters`' rule (normal(0, init_std), residual
  projections scaled by 1/sqrt(2 n_layers), zero biases, unit norms, Eq. 13's M/N), one
  parameter at a time: its full value is drawn on CPU from a generator seeded by
  (seed, parameter name) and each rank keeps its slice, so the initial model is the same
  for any number of ranks (it is not the plain trainer's initial model, whose RNG stream
  also feeds nn.Linear's own init). ``init_from`` weights are read on rank 0 and scattered.
- **Mixed precision**: with ``--precision bf16``, parameters are gathered and computed in
  bf16, gradients reduced in float32, and the sharded master weights and AdamW stay float32.
- **Sharded checkpoints** through ``torch.distributed.checkpoint``: every rank writes its
  shard of the model and optimizer into ``step_N/dcp/``; rank 0 adds the model config,
  tokenizer, ``trainer_state.pt`` (step, scheduler, RNG) and the manifest, then renames the
  folder into place (a kill leaves the previous checkpoint). Resume reads them back, on
  any number of ranks; :func:`consolidate` turns one into a plain safetensors model folder.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tapa.errors import CheckpointError, ConfigError
from tapa.model import ModelConfig, TapaLM
from tapa.model.layers import RMSNorm
from tapa.model.transformer import weight_std
from tapa.utils.files import write_file

DCP_DIR = "dcp"
FORMAT = "fsdp-dcp"


def build_sharded(
    config: ModelConfig, seed: int, device: torch.device, precision: str, init_from: str | None, rank: int
) -> TapaLM:
    """The model, sharded over the default process group, its weights materialised."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    with torch.device("meta"):
        model = TapaLM(config)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    kwargs: dict[str, Any] = {"mesh": mesh, **({"mp_policy": policy} if precision == "bf16" else {})}
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    model.to_empty(device=device)
    model.rebuild_buffers()
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)
    if init_from is not None:
        _load_full(model, init_from, rank)
    else:
        initialise(model, seed)
    return model


def _param_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & (2**63 - 1)


def initial_value(model: TapaLM, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """The full initial value of parameter ``name`` (float32, CPU), by reset_parameters' rule."""
    owner_name, _, leaf = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if isinstance(owner, (nn.Linear, nn.Embedding)) and leaf == "weight":
        generator = torch.Generator().manual_seed(_param_seed(seed, name))
        return torch.empty(shape).normal_(0.0, weight_std(model.config, owner_name), generator=generator)
    if leaf == "bias":
        return torch.zeros(shape)
    if isinstance(owner, RMSNorm):
        return torch.ones(shape)
    if leaf in ("m", "n") and hasattr(owner, "phase"):  # quadratic_full's learnable M / N start at Eq. 13
        from tapa.attention.phase import eq13_matrices

        m, n = eq13_matrices(model.config.head_size, owner.theta)
        return (m if leaf == "m" else n).expand(shape).clone().float()
    raise ConfigError(f"parallel fsdp: no initialisation rule for parameter {name}; use --parallel ddp")


@torch.no_grad()
def initialise(model: TapaLM, seed: int) -> None:
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, param in model.named_parameters():
        full = initial_value(model, name, param.shape, seed)
        if isinstance(param, DTensor):
            local = distribute_tensor(full.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(local.to_local())
        else:
            param.copy_(full)


def _load_full(model: TapaLM, path: str, rank: int) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from tapa.model import load_pretrained

    state = load_pretrained(path).state_dict() if rank == 0 else {}
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state, options=options)


def full_model(model: TapaLM) -> TapaLM | None:
    """Gather the full weights (a collective: every rank calls it); rank 0 gets a plain
    CPU TapaLM, the others None."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    with torch.device("meta"):
        plain = TapaLM(model.config)
    plain.load_state_dict(state, assign=True)
    if model.config.tie_embeddings:
        plain.lm_head.weight = plain.embed.weight
    plain.rebuild_buffers()
    return plain


def save_sharded(
    run_dir: Path, step: int, model: TapaLM, optimizer, save_tokenizer, state: dict[str, Any], keep_last: int, rank: int
) -> None:
    """Write checkpoint ``step`` (every rank calls this)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from tapa.train.checkpoints import STATE_FILE, publish_checkpoint
    from tapa.train.run_dir import PREFIX, RunDir
    from tapa.utils.manifest import write_manifest

    root = RunDir(run_dir).checkpoint_root
    tmp = root / f".{PREFIX}{step:08d}.fsdp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / DCP_DIR))
    dist.barrier()
    if rank == 0:
        (tmp / "config.json").write_text(model.config.to_json())
        save_tokenizer(tmp)
        write_file(tmp / STATE_FILE, lambda: torch.save({**state, "format": FORMAT}, tmp / STATE_FILE))
        names = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_manifest(tmp, names, step=step)
        publish_checkpoint(run_dir, step, tmp, keep_last)
    dist.barrier()


def is_sharded_checkpoint(path: str | Path) -> bool:
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def load_sharded(path: Path, model: TapaLM, optimizer) -> None:
    """Read a sharded checkpoint into the sharded model and optimizer (every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not is_sharded_checkpoint(path):
        raise CheckpointError(
            f"resume: {path} is not a sharded (--parallel fsdp) checkpoint; resume with "
            "the --parallel it was written with"
        )
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(path / DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def consolidate(checkpoint: str | Path, out: str | Path) -> Path:
    """A sharded checkpoint -> a plain model folder (config.json, model.safetensors,
    tokenizer), in one process without a process group."""
    import torch.distributed.checkpoint as dcp

    from tapa.data.tokenizer import copy_tokenizer_files
    from tapa.model import load_config, save_pretrained
    from tapa.train.checkpoints import verify_checkpoint
    from tapa.utils.publish import check_empty_out, publish

    checkpoint, out = Path(checkpoint), Path(out)
    if not is_sharded_checkpoint(checkpoint):
        raise CheckpointError(
            f"consolidate: {checkpoint} holds no sharded checkpoint ({DCP_DIR}/.metadata); "
            "pass a checkpoints/step_N folder of a --parallel fsdp run"
        )
    verify_checkpoint(checkpoint)
    check_empty_out(out)
    model = TapaLM(load_config(checkpoint))
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=str(checkpoint / DCP_DIR), no_dist=True)
    model.load_state_dict(state["model"])

    def write(staging: Path) -> None:
        save_pretrained(model, staging)
        copy_tokenizer_files(checkpoint, staging)

    return publish(out, write)
