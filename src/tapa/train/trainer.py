"""The training loop behind ``tapa train`` and ``tapa finetune``.

One function, :func:`run_training`: validate everything, prepare data (tokenized once and
cached), build or load the model, then step the recipe (:mod:`tapa.train.recipe`: AdamW,
warmup + cosine, clipping) with gradient accumulation and optional bf16 autocast; log,
evaluate and checkpoint. How the run spreads over processes (one process, DDP, FSDP) is
its :mod:`tapa.train.parallel` strategy's business: under ``torchrun`` each rank takes its
slice of every global batch, so N processes follow the single-process loss curve. The run
folder's layout is :class:`tapa.train.run_dir.RunDir`'s.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tapa.data.segments import Sampler, Segments
from tapa.data.shards import is_shard_dir, load_shards
from tapa.data.sources import load_corpus
from tapa.data.token_cache import cached_tokens
from tapa.data.tokenizer import Tokenizer, build_tokenizer
from tapa.errors import ConfigError
from tapa.model import TapaLM, load_pretrained
from tapa.train.checkpoints import clean_incomplete, load_state, resolve_resume
from tapa.train.config import TrainConfig
from tapa.train.distributed import DistEnv, barrier, init_distributed, mean_across_ranks, shutdown
from tapa.train.metrics import MetricsLog, check_wandb
from tapa.train.parallel import Single, check_launch, needs_group, strategy
from tapa.train.recipe import make_optimizer, make_schedule, set_schedule, update
from tapa.train.run_dir import RunDir
from tapa.utils.files import atomic_write_text


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    val_loss: float
    val_bpb: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


@dataclass
class Data:
    tokenizer: Tokenizer
    train: Segments
    validation: Segments


def prepare_data(config: TrainConfig, env: DistEnv | None = None, verbose: bool = False) -> Data:
    env = env or DistEnv()
    if is_shard_dir(config.data):
        return _shard_data(config)
    corpus = load_corpus(config.data, config.val_data, config.text_field)
    tokenizer = build_tokenizer(config.tokenizer, corpus.documents("train"), config.bpe_vocab_size)
    arrays = {}
    for split in ("train", "validation"):
        if env.is_main:  # rank 0 fills the cache, the others read it
            arrays[split] = cached_tokens(corpus, split, tokenizer, config.cache_dir, verbose=verbose)
        barrier(env)
        if not env.is_main:
            arrays[split] = cached_tokens(corpus, split, tokenizer, config.cache_dir)
    return Data(
        tokenizer,
        Segments(arrays["train"], config.seq_len, "train"),
        Segments(arrays["validation"], config.seq_len, "validation"),
    )


def _shard_data(config: TrainConfig) -> Data:
    """A ``tapa tokenize`` folder: its own tokenizer and splits, memory-mapped (every rank maps
    the same files and takes its slice of each batch, as with the in-memory arrays)."""
    tokenizer, arrays = load_shards(config.data)
    if config.val_data is not None:
        raise ConfigError(f"data: {config.data} is a token-shard folder with its own validation split; drop --val-data")
    if config.tokenizer == "bpe":
        raise ConfigError(f"tokenizer: {config.data} is already tokenized; drop --tokenizer bpe")
    if config.tokenizer != "byte":  # byte is the default: the shards' tokenizer is used
        chosen = build_tokenizer(config.tokenizer)
        if chosen.fingerprint() != tokenizer.fingerprint():
            raise ConfigError(f"tokenizer: {config.tokenizer} is not the tokenizer of {config.data}; drop --tokenizer")
    return Data(
        tokenizer,
        Segments(arrays["train"], config.seq_len, "train"),
        Segments(arrays["validation"], config.seq_len, "validation"),
    )


@torch.no_grad()
def evaluate_segments(
    model: TapaLM, segments: Segments, indices: np.ndarray, tokenizer: Tokenizer, batch: int, device, autocast
) -> tuple[float, float, int]:
    """Mean loss (nats/token), bits per byte of the scored text, and the number of tokens scored."""
    was_training = model.training
    model.eval()
    nats, tokens, n_bytes = 0.0, 0, 0
    for i in range(0, len(indices), batch):
        x, y = segments.batch(indices[i : i + batch])
        with autocast():
            logits = model(x.to(device))
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        tokens += y.numel()
        n_bytes += sum(len(tokenizer.decode(row).encode("utf-8")) for row in y)
    model.train(was_training)
    return nats / tokens, nats / math.log(2) / max(n_bytes, 1), tokens


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _check_run_dir(config: TrainConfig, resume: str | None) -> Path:
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a directory; choose another --out")
    has_run = RunDir(out).holds_run()
    if has_run and resume is None:
        raise ConfigError(
            f"out: {out} already holds a training run; pass --resume to continue it or choose another --out"
        )
    if resume is not None and not has_run and resume == "latest":
        raise ConfigError(f"resume: {out} holds no training run to resume; drop --resume")
    return out


def _check_vocab(config: TrainConfig, tokenizer: Tokenizer) -> None:
    if config.model.vocab_size != tokenizer.vocab_size:
        if config.init_from:
            raise ConfigError(
                f"tokenizer: vocabulary {tokenizer.vocab_size} does not match the checkpoint's "
                f"{config.model.vocab_size}; fine-tune with the checkpoint's own tokenizer"
            )
        config.model = config.model.replace(vocab_size=tokenizer.vocab_size)


def _build_model(config: TrainConfig) -> TapaLM:
    """A fresh model from ``config.seed`` (or ``init_from``'s weights), frozen but ``train_only``."""
    torch.manual_seed(config.seed)
    model = TapaLM(config.model)
    if config.init_from:
        model.load_state_dict(load_pretrained(config.init_from).state_dict())
    freeze_all_but(model, config.train_only)
    return model


def _copy_generation(source: Path, out: Path) -> None:
    import shutil

    from tapa.data.tokenizer import GENERATION_FILES

    for name in GENERATION_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def freeze_all_but(model: torch.nn.Module, patterns: list[str] | None) -> None:
    """Set requires_grad only on parameters whose names match a shell pattern (None: all train)."""
    if patterns is None:
        return
    from fnmatch import fnmatchcase

    names = [name for name, _ in model.named_parameters()]
    unused = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
    if unused:
        raise ConfigError(f"train_only: {', '.join(map(repr, unused))} match no parameter (e.g. {names[0]!r})")
    for name, param in model.named_parameters():
        param.requires_grad_(any(fnmatchcase(name, p) for p in patterns))


def run_training(config: TrainConfig, resume: str | None = None, progress: bool = True) -> TrainResult:
    """Train (or fine-tune, when ``config.init_from`` is set) and return the final numbers.

    ``resume`` is ``None`` (a new run; the output directory must not hold one), ``"latest"``
    or a checkpoint directory. Every check runs before anything is written.
    """
    config.validate()
    check_launch(config, under_torchrun="RANK" in os.environ)
    env = init_distributed(config.device, group_always=needs_group(config))
    try:
        return _train(config, resume, progress, env)
    finally:
        shutdown(env)


@dataclass
class _Run:
    """What one training run holds while it trains (built by :func:`_start`)."""

    config: TrainConfig
    env: DistEnv
    parallel: Single
    out: Path
    data: Data
    model: TapaLM
    wrapped: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: Sampler
    start_step: int

    @property
    def micro(self) -> int:
        """Sequences per micro-batch on each rank."""
        return self.config.batch_size // (self.config.grad_accum * self.env.world)


def _train(config: TrainConfig, resume: str | None, progress: bool, env: DistEnv) -> TrainResult:
    run = _start(config, resume, progress, env)
    log = MetricsLog(run.out, enabled=env.is_main, wandb_config=config.to_dict() if config.wandb else None)
    log.truncate_after(run.start_step)
    eval_idx = run.data.validation.evenly_spaced(config.eval_segments)
    bar = _announce(run, progress)
    run.model.train()
    tokens_per_step = config.batch_size * config.seq_len
    loss_value, val_loss, val_bpb = float("nan"), float("nan"), float("nan")
    started = time.perf_counter()
    for step in range(run.start_step + 1, config.steps + 1):
        t0 = time.perf_counter()
        loss_value, lr, grad_norm = _step(run, step)
        dt = time.perf_counter() - t0
        log.log(
            {
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": step * tokens_per_step,
                "tokens_per_s": tokens_per_step / dt,
            }
        )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_step / dt:,.0f}")
        last = step == config.steps
        if (config.eval_every and step % config.eval_every == 0) or last:
            val_loss, val_bpb, n_val = _evaluate(run, eval_idx)
            log.log({"step": step, "val_loss": val_loss, "val_bpb": val_bpb, "val_tokens": n_val})
            if bar is not None:
                bar.write(f"step {step}: validation loss {val_loss:.4f} nats/token, {val_bpb:.4f} bits/byte")
        if (config.save_every and step % config.save_every == 0) or last:
            _save(run, step)
    seconds = time.perf_counter() - started
    if math.isnan(val_loss):  # resumed a finished run: nothing trained, still report
        val_loss, val_bpb, _ = _evaluate(run, eval_idx)
    if bar is not None:
        bar.close()
    log.close()
    run.parallel.save_final(run.model, run.out)
    steps_run = config.steps - run.start_step
    return TrainResult(run.out, config.steps, steps_run * tokens_per_step, seconds, loss_value, val_loss, val_bpb)


def _start(config: TrainConfig, resume: str | None, progress: bool, env: DistEnv) -> _Run:
    """Check, then build everything a run needs, in this order: the checkpoint to resume, the
    data, the model (its weights, or the checkpoint's), the run's files, the device placement,
    the optimizer and schedule (their saved state), the RNG state."""
    out = _check_run_dir(config, resume)
    if config.wandb:
        check_wandb()
    if config.batch_size % (config.grad_accum * env.world):
        raise ConfigError(
            f"batch_size: {config.batch_size} does not split over {env.world} ranks x grad_accum {config.grad_accum}"
        )
    checkpoint = _resume_point(out, resume, env)
    # a resumed run reuses the tokenizer it saved (a BPE is not retrained)
    data_config = config.replace(tokenizer=str(out)) if checkpoint is not None else config
    data = prepare_data(data_config, env, verbose=env.is_main and progress)
    state = load_state(checkpoint) if checkpoint is not None else None
    parallel = strategy(config, env)
    _check_vocab(config, data.tokenizer)  # every strategy builds from the checked config
    model = parallel.build(lambda: _build_model(config), state, checkpoint)
    model.activation_checkpointing = config.activation_checkpointing
    _write_run_files(config, out, data, state, env)
    _place(model, config, env)
    wrapped = parallel.wrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(
        params, config.peak_lr, betas=(config.beta1, config.beta2), eps=config.eps, weight_decay=config.weight_decay
    )
    scheduler = make_schedule(optimizer, config.effective_warmup, config.cosine_steps, config.min_lr_ratio)
    start_step = 0
    if state is not None:
        parallel.load_optimizer(checkpoint, state, model, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        # this run's config decides the schedule (an extended run's total), not the saved fields
        set_schedule(scheduler, config.effective_warmup, config.cosine_steps, config.min_lr_ratio)
        _set_rng_state(state["rng"])
        start_step = int(state["step"])
    sampler = Sampler(len(data.train), config.batch_size, config.seed)
    return _Run(config, env, parallel, out, data, model, wrapped, params, optimizer, scheduler, sampler, start_step)


def _resume_point(out: Path, resume: str | None, env: DistEnv) -> Path | None:
    """The checkpoint to resume from (verified), or None for a fresh start."""
    if resume is not None and env.is_main:
        clean_incomplete(out)  # half-deleted checkpoints of an earlier kill
    barrier(env)
    found = RunDir(out).checkpoints()  # listed once, after the cleaning
    if resume == "latest" and not found:
        resume = None  # killed before its first checkpoint: the run starts again from step 0
    return resolve_resume(out, resume, found) if resume is not None else None


def _write_run_files(config: TrainConfig, out: Path, data: Data, state: dict | None, env: DistEnv) -> None:
    """train_config.json (a new run), the tokenizer and the parent's generation settings."""
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            atomic_write_text(RunDir(out).config_file, config.to_json())
        data.tokenizer.save(out)
        if config.init_from:  # a fine-tuned model keeps its parent's generation settings (EOS ids, chat template)
            _copy_generation(Path(config.init_from), out)
    barrier(env)


def _place(model: TapaLM, config: TrainConfig, env: DistEnv) -> None:
    """The model on its device, compiled block by block when asked (parameter names unchanged)."""
    model.to(env.device)
    if config.compile:
        torch._dynamo.reset()  # a new model: drop the graphs (and recompile budget) of earlier runs in this process
        if env.device.type == "cpu":  # load (or build) the fused kernel outside the traced code
            from tapa.attention.fused_cpu import fused_cpu_available

            fused_cpu_available()
        for block in model.blocks:
            block.compile()


def _announce(run: _Run, progress: bool):
    if not (run.env.is_main and progress):
        return None
    config = run.config
    print(run.model.describe())
    print(
        f"data: {len(run.data.train):,} train segments of {config.seq_len} tokens "
        f"({config.data}, tokenizer {config.tokenizer}); {config.steps} steps x {config.batch_size} sequences; "
        f"peak lr {config.peak_lr:.2e}; world size {run.env.world}"
    )
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=run.start_step, unit="step", dynamic_ncols=True)


def _step(run: _Run, step: int) -> tuple[float, float, torch.Tensor]:
    """One optimizer step over grad_accum micro-batches: (mean loss over ranks, the LR it used,
    the gradient norm before clipping). Raises on a non-finite loss."""
    config, env = run.config, run.env
    indices = run.sampler.rank_batch(step - 1, env.rank, env.world)
    total = torch.zeros((), device=env.device)
    micro = run.micro
    for k in range(config.grad_accum):
        x, y = run.data.train.batch(indices[k * micro : (k + 1) * micro])
        x, y = x.to(env.device), y.to(env.device)
        with run.parallel.micro_batch(run.model, run.wrapped, last=k == config.grad_accum - 1):
            with run.parallel.autocast():
                logits = run.wrapped(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / config.grad_accum
            loss.backward()
        total += loss.detach()
    lr = run.optimizer.param_groups[0]["lr"]
    grad_norm = run.parallel.grad_norm(update(run.params, run.optimizer, run.scheduler, config.grad_clip))
    loss_value = mean_across_ranks(total, env).item()
    if not math.isfinite(loss_value):
        raise ConfigError(
            f"training diverged at step {step} (loss {loss_value}); lower --lr (now {config.peak_lr:.2e}) "
            "or raise --warmup-steps, then resume from the last checkpoint or restart"
        )
    return loss_value, lr, grad_norm


def _evaluate(run: _Run, eval_idx: np.ndarray) -> tuple[float, float, int]:
    return evaluate_segments(
        run.model,
        run.data.validation,
        eval_idx,
        run.data.tokenizer,
        run.micro * run.config.grad_accum,
        run.env.device,
        run.parallel.autocast,
    )


def _save(run: _Run, step: int) -> None:
    """A checkpoint at ``step``: model, optimizer, schedule, RNG and sampler position."""
    config = run.config
    trainer_state = {
        "step": step,
        "sequences_seen": step * config.batch_size,
        "epoch": run.sampler.epoch(step),
        "scheduler": run.scheduler.state_dict(),
        "rng": _rng_state(),
        "train_config": config.to_json(),
    }
    run.parallel.save(run.out, step, run.model, run.optimizer, run.data.tokenizer.save, trainer_state, config.keep_last)
