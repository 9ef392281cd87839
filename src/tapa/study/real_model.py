"""A real pretrained RoPE model converted to TAPA and continually pretrained, against the
same model continually pretrained as RoPE on the same tokens.

The paper's newest claim is that a RoPE model becomes a TAPA model with light continual
pretraining. This study tries it on a model people use (by default SmolLM2-135M-Instruct,
read from its GGUF file), as cached, resumable stages:

1. ``base``: the source (a GGUF file, a transformers folder or a tapa run) as a tapa run;
2. ``convert_naive`` and ``convert_lowfreq`` (:mod:`tapa.model.conversion`): the two
   conversions, zero-shot;
3. ``speed``: a few training steps, to measure tokens/s; the training steps of each arm are
   then chosen to fit ``train_minutes`` (or fixed by ``steps``);
4. ``train_tapa`` and ``train_rope``: the lowfreq-converted model and the original RoPE model
   trained on the same tokens (the training books, same seed and data order), same steps, LR
   schedule and frozen parameters (only the query and key projections train by default: a
   positional change only changes scores; the RoPE arm freezes exactly the same);
5. ``ppl_*``: test-book perplexity at each evaluation length L, of the tokens at positions
   L/2 .. L-1 of non-overlapping windows of L tokens (so every scored token has at least L/2
   tokens of context), for the original, both zero-shot conversions, both trained arms, and
   YaRN on the two RoPE models past their training length (factor L / max_seq_len, inference time).

The validation loss over training steps (the validation book, at the training length) is
read from each arm's metrics log.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tapa.experiment.runs import environment, write_results
from tapa.utils.stats import mean_interval

CONVERSIONS = ("naive", "lowfreq")


@dataclass(frozen=True)
class RealModelStudy:
    name: str
    train_len: int = 2048
    batch_size: int = 1
    train_minutes: float = 25.0  # per arm, from the measured tokens/s
    steps: int | None = None  # fixed steps instead of train_minutes
    lr: float = 3e-4
    warmup_steps: int = 10
    train_only: tuple[str, ...] = ("blocks.*.attn.wq.*", "blocks.*.attn.wk.*")
    phase_scale: float = 2 * math.pi
    phase_init: float = 0.05
    eval_lengths: tuple[int, ...] = (512, 2048, 8192, 16384)
    eval_tokens: int = 8192  # per length, at least one window
    naive_lengths: tuple[int, ...] = (512, 2048, 8192)  # the naive conversion is only scored here
    eval_every: int = 20
    eval_segments: int = 4
    seed: int = 0


STUDIES = {
    "default": RealModelStudy("default"),
    # toy sizes, for the tests
    "smoke": RealModelStudy(
        "smoke",
        train_len=32,
        batch_size=2,
        steps=4,
        eval_lengths=(32, 64, 256),
        eval_tokens=256,
        naive_lengths=(32,),
        eval_every=2,
        eval_segments=2,
        warmup_steps=1,
    ),
}


def run_real_model(
    study: RealModelStudy, source: str | Path, out: str | Path, cache_dir: str | None = None, verbose: bool = True
) -> dict[str, Any]:
    from tapa.experiment.runs import train_in
    from tapa.experiment.stages import printer, run_stage

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = printer(verbose)
    started = time.perf_counter()
    base = _base_run(Path(source), out, log)
    runs = {"original": base}
    for conversion in CONVERSIONS:
        key = {"base": base, "conversion": conversion, "phase_scale": study.phase_scale, "phase_init": study.phase_init}
        res = run_stage(out, f"convert_{conversion}", key, lambda d, c=conversion: _convert(base, c, study, d), log)
        runs[f"{conversion}_zero_shot"] = res["run"]
    steps, speed = _plan_steps(study, base, out, cache_dir, log)
    train: dict[str, Any] = {}
    for arm, init in (("tapa", runs["lowfreq_zero_shot"]), ("rope", base)):
        config = _train_config(study, init, steps, cache_dir)
        res = run_stage(out, f"train_{arm}", {"train": config.to_dict()}, lambda d, c=config: train_in(c, d), log)
        train[arm] = {**res, "curve": _curve(res["run"])}
        runs[f"{arm}_trained"] = res["run"]
    perplexity: dict[str, Any] = {}
    for name, run in runs.items():
        lengths = study.naive_lengths if name.startswith("naive") else study.eval_lengths
        perplexity[name] = _perplexity_stage(study, out, name, run, lengths, None, cache_dir, log)
        if name in ("original", "rope_trained"):
            perplexity[f"{name}+yarn"] = _perplexity_stage(
                study, out, f"{name}+yarn", run, lengths, "yarn", cache_dir, log
            )
    results = {
        "study": asdict(study),
        "source": str(source),
        "model": _describe(base),
        "runs": runs,
        "speed": speed,
        "steps": steps,
        "tokens_per_arm": steps * study.batch_size * study.train_len,
        "train": train,
        "perplexity": perplexity,
        "machine": environment(),
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": time.perf_counter() - started,
    }
    from tapa.experiment.stages import finished_seconds

    results["stage_seconds"] = finished_seconds(out)
    write_results(out, results)
    from tapa.study.real_model_report import plot_curves, write_report

    plot_curves(results, out / "training_curve.png")
    write_report(results, out)
    return results


def check_source(source: str | Path) -> None:
    """Refuse, before anything is written, a source that is not a RoPE model this study reads:
    a GGUF file (by its magic bytes), a transformers folder (config.json) or a tapa RoPE run."""
    from tapa.errors import ConfigError

    path = Path(source)
    if path.is_file():
        with path.open("rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ConfigError(
                f"real-convert: {path} is not a GGUF file (it does not start with 'GGUF'); "
                "pass a .gguf file, a transformers folder or a tapa RoPE run"
            )
        return
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"real-convert: {path} is neither a GGUF file nor a folder with a config.json")
    if (path / "manifest.json").is_file():  # a tapa run
        from tapa.model import load_config

        config = load_config(str(path))
        if config.positional != "rope":
            raise ConfigError(f"real-convert: {path} is a {config.positional!r} model; the study converts a RoPE model")


def _base_run(source: Path, out: Path, log) -> str:
    """A tapa run of ``source``: itself when it is one, else imported once (a stage)."""
    from tapa.experiment.stages import run_stage

    if source.is_dir() and (source / "config.json").is_file() and (source / "manifest.json").is_file():
        return str(source.resolve())
    stat = source.stat()

    def work(directory: Path) -> dict[str, Any]:
        from tapa.hf.importer import import_hf

        run = directory / "run"
        shutil.rmtree(run, ignore_errors=True)
        import_hf(source, run)
        return {"run": str(run)}

    key = {"source": str(source.resolve()), "bytes": stat.st_size, "mtime": int(stat.st_mtime)}
    return run_stage(out, "base", key, work, log)["run"]


def _convert(base: str, conversion: str, study: RealModelStudy, directory: Path) -> dict[str, Any]:
    from tapa.hf.convert import save_with_tokenizer
    from tapa.model import load_pretrained
    from tapa.model.conversion import convert_to_tapa

    model = convert_to_tapa(
        load_pretrained(base), conversion, phase_scale=study.phase_scale, phase_init=study.phase_init
    )
    run = directory / "run"
    shutil.rmtree(run, ignore_errors=True)
    save_with_tokenizer(model, base, run)
    return {"run": str(run), "phases": phase_statistics(model, base)}


@torch.no_grad()
def phase_statistics(model, base: str, distances: tuple[int, ...] = (1, 10, 100, 500)) -> dict[str, float]:
    """Median |phase| (radians) over heads and pairs of a 512-token validation text, by distance."""
    from tapa.data.tokenizer import load_checkpoint_tokenizer
    from tapa.evaluate.heldout import heldout_documents
    from tapa.study.diagnostics import layer_scores

    length = min(512, model.config.max_seq_len)
    doc = heldout_documents(load_checkpoint_tokenizer(base), "books", "validation", length)[0][:length]
    phases = [entry["phase"] for entry in layer_scores(model.eval(), doc[None])]
    out = {}
    for d in distances:
        if d < length:
            values = torch.cat([p[0].diagonal(offset=-d, dim1=-2, dim2=-1).flatten() for p in phases])
            out[str(d)] = float(values.abs().median())
    return out


def _train_config(study: RealModelStudy, init: str, steps: int, cache_dir: str | None):
    from tapa.model import load_pretrained
    from tapa.train.config import TrainConfig

    model = load_pretrained(init).config
    return TrainConfig(
        seq_len=study.train_len,
        batch_size=study.batch_size,
        steps=steps,
        lr=study.lr,
        warmup_steps=min(study.warmup_steps, steps),
        seed=study.seed,
        eval_every=study.eval_every,
        eval_segments=study.eval_segments,
        save_every=max(1, study.eval_every),
        init_from=init,
        tokenizer=init,
        cache_dir=cache_dir,
        model=model,
        train_only=list(study.train_only),
    )


def _plan_steps(study: RealModelStudy, base: str, out: Path, cache_dir: str | None, log) -> tuple[int, dict]:
    """Steps per arm: fixed, or the measured tokens/s (3 steps of the TAPA arm's shape) x train_minutes."""
    from tapa.experiment.runs import train_in
    from tapa.experiment.stages import run_stage

    if study.steps is not None:
        return study.steps, {}
    config = _train_config(study, base, 3, cache_dir).replace(eval_every=0, save_every=0, warmup_steps=1)
    res = run_stage(out, "speed", {"train": config.to_dict()}, lambda d: train_in(config, d), log)
    per_second = res["tokens_per_second"]
    steps = max(1, int(study.train_minutes * 60 * per_second / (study.batch_size * study.train_len)))
    return steps, {"tokens_per_second": per_second, "measured_steps": 3}


def _curve(run: str) -> dict[str, float]:
    from tapa.train.metrics import read_metrics

    return {str(step): value for step, value in read_metrics(run, "val_loss").items()}


def long_half_perplexity(model, doc: torch.Tensor, length: int, tokens: int) -> dict[str, Any]:
    """Perplexity of positions L/2 .. L-1 of non-overlapping windows of L = ``length`` tokens
    over the first max(``tokens``, L) tokens of ``doc`` (the evaluator's windows, scoring only
    their second half); the t-interval over windows when there are several."""
    from tapa.errors import ConfigError
    from tapa.evaluate.perplexity import window_losses
    from tapa.evaluate.windows import Window

    span = max(tokens, length)
    if len(doc) < span + 1:
        raise ConfigError(f"real-convert: the test text has {len(doc)} tokens; length {length} needs {span + 1}")
    device = next(model.parameters()).device
    losses = [
        float(window_losses(model, doc.long(), [Window(start, start + length, length // 2)], device)[0].mean())
        for start in range(0, span - length + 1, length)
    ]  # one window at a time: memory of one
    stats = mean_interval(losses)
    return {
        "perplexity": math.exp(stats["mean"]),
        "windows": len(losses),
        "scored_tokens": len(losses) * (length // 2),
        "low": math.exp(stats["low"]) if stats["low"] is not None else None,
        "high": math.exp(stats["high"]) if stats["high"] is not None else None,
    }


def _perplexity_stage(
    study: RealModelStudy, out: Path, name: str, run: str, lengths, scaling: str | None, cache_dir: str | None, log
) -> dict[str, Any]:
    from tapa.experiment.stages import run_stage

    def work(_directory: Path) -> dict[str, Any]:
        from tapa.data.tokenizer import load_checkpoint_tokenizer
        from tapa.evaluate.heldout import heldout_documents
        from tapa.model import load_pretrained
        from tapa.model.scaling import scaled_model_config, with_config

        trained = load_pretrained(run).eval()
        need = max(max(lengths), study.eval_tokens) + 1
        doc = heldout_documents(load_checkpoint_tokenizer(run), "books", "test", need, cache_dir)[0]
        rows = {}
        for length in lengths:
            model, factor = trained, 1.0
            if scaling:
                factor = length / trained.config.max_seq_len
                if factor <= 1:
                    continue  # YaRN is RoPE itself at or below the training length
                config = scaled_model_config(trained.config, trained.config.max_seq_len, yarn=factor, context="study")
                model = with_config(trained, config).eval()
            start = time.perf_counter()
            rows[str(length)] = {
                **long_half_perplexity(model, doc, length, study.eval_tokens),
                "seconds": time.perf_counter() - start,
                "scale_factor": factor,
            }
        return {"lengths": rows}

    key = {"run": run, "lengths": list(lengths), "scaling": scaling, "eval_tokens": study.eval_tokens}
    return run_stage(out, f"ppl_{name.replace('+', '_')}", key, work, log)


def _describe(run: str) -> dict[str, Any]:
    from tapa.model import ModelConfig

    c = ModelConfig.load(Path(run) / "config.json")
    return {
        "layers": c.n_layers,
        "d_model": c.d_model,
        "heads": c.n_heads,
        "kv_heads": c.kv_heads,
        "head_dim": c.head_size,
        "vocab": c.vocab_size,
        "max_seq_len": c.max_seq_len,
        "rope_base": c.rope_base,
    }
