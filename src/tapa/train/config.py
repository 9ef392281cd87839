"""Training configuration: one dataclass, validated up front, saved beside every run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from tapa.errors import ConfigError
from tapa.model import ModelConfig

PRECISIONS = ("fp32", "bf16")
OMITTED_AT_DEFAULT = {
    "activation_checkpointing": False,
    "parallel": "ddp",
    "compile": False,
    "wandb": False,
    "train_only": None,
    "schedule_steps": None,
}
PARALLEL = ("ddp", "fsdp")
# Peak learning rates chosen by the sweep recorded in docs/lr_sweep.json (scripts/lr_sweep.py): the best
# final validation loss for a ~2M-parameter byte model at 256 tokens on the default corpus.
DEFAULT_LR = {"rope": 2e-3, "tapa": 1e-3, "nope": 2e-3, "alibi": 1e-3}
# The paper fine-tunes every method at one peak LR (2e-5, its TAPA pretraining LR).
FINETUNE_LR_RATIO = 0.2


@dataclass
class TrainConfig:
    out: str = "runs/train"
    # data
    data: str = "books"
    val_data: str | None = None
    text_field: str = "text"
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    cache_dir: str | None = None
    # optimisation (paper defaults: AdamW 0.9/0.95/1e-8, no weight decay, warmup + cosine to 0.1x)
    seq_len: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    steps: int = 1000
    lr: float | None = None
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    # recompute each block's activations in the backward pass instead of storing them
    activation_checkpointing: bool = False
    # under torchrun: ddp (replicated model, averaged gradients) or fsdp (FSDP2, sharded)
    parallel: str = "ddp"
    # torch.compile the model (each block; TAPA's fused CPU kernel runs as an opaque custom op)
    compile: bool = False
    # log to Weights & Biases as well (pip install 'tapa[wandb]'; WANDB_MODE=offline works offline)
    wandb: bool = False
    seed: int = 0
    device: str = "auto"
    # bookkeeping
    eval_every: int = 100
    eval_segments: int = 64
    save_every: int = 500
    keep_last: int = 3
    # fine-tuning: the checkpoint the run starts from (None = from scratch)
    init_from: str | None = None
    # train only the parameters whose names match one of these shell patterns (e.g.
    # "blocks.*.attn.wq.*"); the rest stay frozen. None = train everything
    train_only: list[str] | None = None
    # the steps the warmup + cosine is laid over (None: ``steps``). An extended run keeps its
    # original count here for a constant tail at min_lr_ratio (``tapa train --resume --steps N
    # --extend constant``); ``--extend cosine`` stretches the cosine to the new total instead
    schedule_steps: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)

    def validate(self) -> None:
        for name in ("activation_checkpointing", "compile", "wandb"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"parallel: unknown {self.parallel!r}; choose one of {', '.join(PARALLEL)}")
        positive = ("bpe_vocab_size", "seq_len", "batch_size", "grad_accum", "steps", "eval_segments", "keep_last")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}: must be a non-negative integer (0 = only at the end), got {value!r}")
        if self.schedule_steps is not None and (
            isinstance(self.schedule_steps, bool) or not isinstance(self.schedule_steps, int) or self.schedule_steps < 1
        ):
            raise ConfigError(f"schedule_steps: must be a positive integer, got {self.schedule_steps!r}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(f"warmup_steps: must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if self.lr is not None and not 0 < self.lr < 1:
            raise ConfigError(f"lr: must be in (0, 1), got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.eps > 0 and self.weight_decay >= 0):
            raise ConfigError("adamw: need 0 <= beta1, beta2 < 1, eps > 0 and weight_decay >= 0")
        if self.grad_clip < 0:
            raise ConfigError(f"grad_clip: must be >= 0 (0 disables clipping), got {self.grad_clip}")
        if self.train_only is not None:
            if (
                not isinstance(self.train_only, list | tuple)
                or not self.train_only
                or not all(isinstance(p, str) and p for p in self.train_only)
            ):
                raise ConfigError(
                    f"train_only: expected a non-empty list of parameter-name patterns, got {self.train_only!r}"
                )
            if self.parallel == "fsdp":
                raise ConfigError("train_only: not supported with --parallel fsdp; use ddp or one process")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: unknown {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size: {self.batch_size} sequences do not split into grad_accum={self.grad_accum} equal "
                "micro-batches; make batch_size a multiple of grad_accum"
            )
        if self.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"seq_len: {self.seq_len} exceeds the model's max_seq_len {self.model.max_seq_len}; raise --max-seq-len"
            )
        self.model.validate()

    @property
    def cosine_steps(self) -> int:
        """The total the cosine decays over (``schedule_steps``, else ``steps``)."""
        return self.schedule_steps if self.schedule_steps is not None else self.steps

    @property
    def effective_warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, round(0.05 * self.steps))

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        base = DEFAULT_LR[self.model.positional]
        return base * FINETUNE_LR_RATIO if self.init_from else base

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        # fields added later are not written at their defaults: older configs and the
        # reproduce/study stage hashes derived from them stay the same
        for name, default in OMITTED_AT_DEFAULT.items():
            if out[name] == default:
                del out[name]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"train config: unknown field(s) {', '.join(unknown)}")
        data = dict(data)
        model = data.pop("model", {})
        return cls(**data, model=model if isinstance(model, ModelConfig) else ModelConfig.from_dict(model))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"train config: {path} does not exist")
        from tapa.utils.jsonfile import read_json_object

        return cls.from_dict(read_json_object(path, "train config"))

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)
