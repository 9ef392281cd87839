"""``tapa train`` and ``tapa finetune``: flags map one-to-one onto :class:`TrainConfig` fields.

Flags default to "not given", so a resumed run can tell what the user changed: with
``--resume`` the run's saved ``train_config.json`` is used, and a flag that contradicts it
is an error rather than a silent change.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tapa.errors import ConfigError
from tapa.model import load_config
from tapa.positional import POSITIONAL_SCHEMES
from tapa.train.config import PARALLEL, PRECISIONS, TrainConfig
from tapa.train.flags import FREE_ON_RESUME, MODEL_FLAGS, PRETRAIN_ONLY, ROPE_SCALING_HELP, TRAIN_FLAGS
from tapa.train.run_dir import RunDir


def _default_of(name: str, dest_prefix: str) -> Any:
    from tapa.model import ModelConfig

    source = ModelConfig() if dest_prefix == "model." else TrainConfig()
    return getattr(source, name, None)


def _add(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, type, str]], dest_prefix: str = "") -> None:
    for flag, (name, kind, help_text) in flags.items():
        if "default" not in help_text:  # every flag shows its default in --help
            default = _default_of(name, dest_prefix)
            help_text = f"{help_text} (default: {'none' if default in (None, '') else default})"
        extra: dict[str, Any] = {}
        if name == "precision":
            extra["choices"] = PRECISIONS
        if name == "parallel":
            extra["choices"] = PARALLEL
        if name == "positional":
            extra["choices"] = POSITIONAL_SCHEMES
        if "choices" not in extra:  # plain metavars (D_MODEL, not MODEL.D_MODEL)
            extra["metavar"] = flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(
            flag, dest=dest_prefix + name, type=kind, default=argparse.SUPPRESS, help=help_text, **extra
        )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics, final model)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue the run in --out from its latest checkpoint (or the one given)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or summary lines")
    parser.add_argument(
        "--extend",
        choices=EXTENSIONS,
        help="with --resume and a larger --steps: continue a finished or running run past its planned steps; "
        "constant: the LR stays at its final value (min-lr-ratio x peak) for the added steps; cosine: the "
        "cosine is stretched over the new total (the LR rises again at the resume point)",
    )
    _add(parser, TRAIN_FLAGS)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="pretrain a model from scratch")
    train.add_argument("--config", help="a train_config.json to start from (flags override it)")
    _add_common(train)
    _add(train, PRETRAIN_ONLY)
    _add(train, MODEL_FLAGS, dest_prefix="model.")
    train.add_argument("--rope-scaling", metavar="JSON", help=ROPE_SCALING_HELP + " (default: none)")
    train.set_defaults(func=_train)

    planner = sub.add_parser("plan", help="parameters, FLOPs and memory per GPU of a model config, and the command")
    planner.add_argument("model_config", metavar="CONFIG", help="a model config.json (e.g. configs/paper-7b-tapa.json)")
    planner.add_argument("--gpus", type=int, default=1, help="GPUs the run is spread over")
    planner.add_argument("--seq-len", type=int, default=8192, help="training length")
    planner.add_argument("--parallel", choices=("fsdp", "ddp"), default="fsdp", help="how states are spread")
    planner.set_defaults(func=_plan)

    cons = sub.add_parser(
        "consolidate", help="a sharded (--parallel fsdp) checkpoint -> a plain safetensors model folder"
    )
    cons.add_argument("checkpoint", metavar="CHECKPOINT", help="RUN/checkpoints/step_N of a --parallel fsdp run")
    cons.add_argument("--out", required=True, help="a new (or empty) folder for the model")
    cons.set_defaults(func=_consolidate)

    fine = sub.add_parser("finetune", help="continue a checkpoint at a longer length (RoPE rescaling optional)")
    fine.add_argument("checkpoint", help="a model directory (config.json + model.safetensors)")
    _add_common(fine)
    group = fine.add_mutually_exclusive_group()
    group.add_argument("--pi", type=float, help="position interpolation factor (RoPE only)")
    group.add_argument("--yarn", type=float, help="YaRN factor (RoPE only)")
    group.add_argument("--ntk", type=float, help="NTK-aware factor (RoPE only)")
    group.add_argument(
        "--new-rope-base", dest="rope_base", type=float, help="a larger RoPE base, as in ABF (RoPE only)"
    )
    group.add_argument(
        "--rope-scaling", metavar="JSON", help=ROPE_SCALING_HELP + "; the original length is the checkpoint's"
    )
    fine.set_defaults(func=_finetune)


def _given(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    values = vars(args)
    train = {name: values[name] for name, _, _ in (*TRAIN_FLAGS.values(), *PRETRAIN_ONLY.values()) if name in values}
    model = {name: values["model." + name] for name, _, _ in MODEL_FLAGS.values() if "model." + name in values}
    return train, model


EXTENSIONS = ("constant", "cosine")


def extended_config(saved: TrainConfig, steps: int, extension: str) -> TrainConfig:
    """``saved`` run to ``steps`` (more than planned): warmup pinned to what it was; ``constant``
    keeps the cosine over the original total (so the added steps sit at min_lr_ratio),
    ``cosine`` lays it over the new total."""
    if steps <= saved.steps:
        raise ConfigError(f"--extend: --steps {steps} must exceed the run's {saved.steps} steps")
    if extension not in EXTENSIONS:
        raise ConfigError(f"--extend: unknown {extension!r}; choose one of {', '.join(EXTENSIONS)}")
    schedule = saved.cosine_steps if extension == "constant" else None
    return saved.replace(steps=steps, warmup_steps=saved.effective_warmup, schedule_steps=schedule)


def _resumed(out: str, train: dict[str, Any], model: dict[str, Any], extend: str | None = None) -> TrainConfig:
    path = RunDir(out).config_file
    if not path.is_file():
        raise ConfigError(f"resume: {out} holds no training run (no train_config.json); drop --resume")
    saved = TrainConfig.load(path)
    if extend is not None:
        if "steps" not in train:
            raise ConfigError("--extend: give the new total with --steps N")
        if train["steps"] != saved.steps:  # a repeat after an interrupted extension finds steps already N
            saved = extended_config(saved, train["steps"], extend)
            from tapa.utils.files import atomic_write_text

            atomic_write_text(path, saved.to_json())  # the run's plan is now the extended one
    elif "steps" in train and train["steps"] > saved.steps:
        raise ConfigError(
            f"resume: --steps {train['steps']} is more than the run's {saved.steps}; add --extend "
            "constant (keep the final LR) or --extend cosine (stretch the cosine)"
        )
    for name, value in train.items():
        if name not in FREE_ON_RESUME and getattr(saved, name) != value:
            raise ConfigError(
                f"resume: --{name.replace('_', '-')} {value} differs from the run's {getattr(saved, name)}; "
                "drop it, or start a new run with another --out"
            )
    for name, value in model.items():
        if getattr(saved.model, name) != value:
            raise ConfigError(f"resume: the model's {name} is {getattr(saved.model, name)} in this run, not {value}")
    # --out wins over the folder the run was started in: a copied or moved run resumes in place
    return saved.replace(**{k: v for k, v in train.items() if k in FREE_ON_RESUME}, out=out)


def _verify_final_model(out: Path) -> None:
    """A finished run's model must load before it is called there (sizes, hashes, tensors)."""
    from tapa.errors import CheckpointError
    from tapa.model import load_pretrained

    try:
        load_pretrained(out)
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}; the run's final model is damaged: delete {out / 'model.safetensors'} and "
            "resume again to rewrite it from the last checkpoint"
        ) from None


def _run(config: TrainConfig, args: argparse.Namespace) -> None:
    from tapa.train.checkpoints import resolve_resume
    from tapa.train.trainer import run_training

    if args.resume == "latest" and RunDir(config.out).finished(config.steps):
        resolve_resume(config.out, "latest")  # a damaged final checkpoint is still reported, with the fix
        _verify_final_model(Path(config.out))
        print(f"{config.out} already finished all {config.steps} steps; nothing to resume (its model is there)")
        return

    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    result = run_training(config, resume=args.resume, progress=not args.no_progress and main_rank)
    if not args.no_progress and main_rank:
        print(
            f"done: {result.steps} steps, final train loss {result.final_loss:.4f}, validation "
            f"{result.val_loss:.4f} nats/token = {result.val_bpb:.4f} bits/byte; "
            f"{result.tokens_per_second:,.0f} tokens/s; model saved in {result.run_dir}/"
        )


def _resumed_from_args(args: argparse.Namespace, train: dict[str, Any], model: dict[str, Any]) -> TrainConfig | None:
    """With --resume, the saved run's config (flags checked against it); without, None
    (and no --extend, which only extends an existing run)."""
    if args.resume:
        if args.rope_scaling is not None:
            raise ConfigError("resume: --rope-scaling is fixed when a run starts; drop it to resume")
        return _resumed(args.out, train, model, args.extend)
    if args.extend is not None:
        raise ConfigError("--extend: only with --resume (it extends an existing run)")
    return None


def _train(args: argparse.Namespace) -> None:
    train, model = _given(args)
    config = _resumed_from_args(args, train, model)
    if config is None:
        base = TrainConfig.load(args.config) if args.config else TrainConfig()
        if "seq_len" in train and "max_seq_len" not in model:
            model["max_seq_len"] = train["seq_len"]
        model_config = base.model.replace(**model) if model else base.model
        _check_scheme_flags(model, model_config.positional)
        if args.rope_scaling is not None:
            from tapa.hf.config import rope_scaling_changes

            changes = rope_scaling_changes(args.rope_scaling, model_config, model_config.max_seq_len, "train")
            model_config = model_config.replace(**changes)
        config = base.replace(**train, out=args.out, model=model_config)
    _run(config, args)


# model flags that only mean something for one positional scheme
SCHEME_FLAGS = {
    "tapa_alpha": "tapa",
    "tapa_theta": "tapa",
    "tapa_phase": "tapa",
    "tapa_phase_scale": "tapa",
    "rope_base": "rope",
    "partial_rotary_factor": "rope",
}


def _check_scheme_flags(given: dict[str, Any], positional: str) -> None:
    """A flag of another scheme would be silently ignored: refuse it."""
    for name, scheme in SCHEME_FLAGS.items():
        if name in given and positional != scheme:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} applies to --positional {scheme}, not {positional}; drop it")


def _finetune(args: argparse.Namespace) -> None:
    from tapa.model.scaling import scaled_model_config

    train, model = _given(args)
    config = _resumed_from_args(args, train, model)
    if config is None:
        base_model = load_config(args.checkpoint)
        seq_len = train.pop("seq_len", 4 * base_model.max_seq_len)
        model_config = scaled_model_config(
            base_model, seq_len, pi=args.pi, yarn=args.yarn, ntk=args.ntk, rope_base=args.rope_base
        )
        if args.rope_scaling is not None:
            from tapa.hf.config import rope_scaling_changes

            changes = rope_scaling_changes(args.rope_scaling, base_model, base_model.max_seq_len, "finetune")
            model_config = model_config.replace(**changes)
        config = TrainConfig(
            out=args.out,
            tokenizer=args.checkpoint,
            init_from=args.checkpoint,
            seq_len=seq_len,
            **{"steps": 200, "eval_every": 50, **train},
            model=model_config,
        )
    _run(config, args)


def _consolidate(args: argparse.Namespace) -> None:
    from tapa.train.fsdp import consolidate

    out = consolidate(args.checkpoint, args.out)
    print(f"consolidated {args.checkpoint} -> {out} (config.json, model.safetensors, tokenizer)")


def _plan(args: argparse.Namespace) -> None:
    from tapa.model import ModelConfig
    from tapa.train.plan import describe

    print(describe(ModelConfig.load(args.model_config), args.gpus, args.seq_len, args.parallel))
