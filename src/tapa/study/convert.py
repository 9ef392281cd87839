"""RoPE -> TAPA conversion: how much continued training does a RoPE model need to become a
TAPA model as good as its parent, and how far does the result extrapolate?

TAPA has no parameters of its own, so a trained RoPE model converts by switching the
attention and keeping every weight (``tapa convert``). From one parent this study
fine-tunes two children on the same data, length and steps:

- the converted TAPA model (no RoPE anywhere),
- the parent itself with YaRN (factor ``yarn_factor``), the usual RoPE context extension,
- (``tapa_at_rope_lr``) the converted model again at the YaRN child's LR, since the
  library's fine-tuning LR for TAPA (0.2 x 1e-3) is half RoPE's (0.2 x 2e-3),

keeping a checkpoint every ``save_every`` steps. Every checkpoint (and step 0, before any
update) is scored on the test book at the parent's training length L0, and the final
models from L0 to 16 x L0 (sliding windows, stride = window / 4). "Within 5%" is read two
ways and both are reported: the L0 loss (nats per token) at most 1.05 x the parent's, and
the L0 perplexity at most 1.05 x the parent's (the stricter one: exp(0.05 x loss)).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tapa.errors import ConfigError
from tapa.experiment.runs import write_results
from tapa.experiment.stages import printer, run_stage
from tapa.study.ablation import train_stage
from tapa.study.perplexity_stage import perplexity_stage
from tapa.train.config import TrainConfig

TOLERANCE = 0.05


@dataclass(frozen=True)
class ConvertStudy:
    steps: int = 600  # the paper-cpu preset's pretraining steps: as many tokens as the parent saw
    save_every: int = 50
    length_factor: int = 4  # fine-tune at 4 x L0, as tapa reproduce does
    batch_size: int = 4  # x 4 L0 tokens: the parent's tokens per step at 16 x L0
    yarn_factor: float = 8.0  # tapa reproduce's YaRN factor
    eval_factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    eval_tokens: int = 16384
    seed: int = 0
    tapa_at_rope_lr: bool = True


STUDIES = {
    "default": ConvertStudy(),
    "smoke": ConvertStudy(steps=4, save_every=2, batch_size=2, eval_factors=(1, 2), eval_tokens=600),
}


def _perplexity_stage(out: Path, name: str, run: str, lengths: list[int], study: ConvertStudy, cache_dir, log):
    return perplexity_stage(out, name, run, lengths, study.eval_tokens, cache_dir, log)


def _convert_stage(out: Path, parent: str, log) -> dict[str, Any]:
    def work(directory: Path) -> dict[str, Any]:
        from tapa.hf.convert import save_with_tokenizer, switched

        run = directory / "run"
        save_with_tokenizer(switched(parent, "tapa"), parent, run)
        return {"run": str(run)}

    return run_stage(out, "convert_tapa", {"parent": parent, "positional": "tapa"}, work, log)


def child_config(
    study: ConvertStudy, start: str, base_len: int, yarn: bool, cache_dir: str | None, lr: float | None = None
) -> TrainConfig:
    from tapa.model import load_config
    from tapa.model.scaling import scaled_model_config

    seq_len = study.length_factor * base_len
    model = scaled_model_config(
        load_config(start), seq_len, yarn=study.yarn_factor if yarn else None, context="study convert"
    )
    if yarn:  # the original length is the parent's L0 (scaled_model_config reads it from the start's config)
        assert model.rope_scaling["original_max_position_embeddings"] == base_len
    return TrainConfig(
        seq_len=seq_len,
        batch_size=study.batch_size,
        steps=study.steps,
        seed=study.seed,
        eval_every=0,
        save_every=study.save_every,
        keep_last=study.steps // study.save_every + 1,
        eval_segments=8,
        init_from=start,
        tokenizer=start,
        cache_dir=cache_dir,
        model=model,
        lr=lr,
    )


def steps_to_within(curve: list[dict[str, Any]], parent: dict[str, float], tolerance: float = TOLERANCE):
    """First step whose L0 loss is <= (1 + tol) x the parent's, and first whose perplexity is
    <= (1 + tol) x the parent's (None: not reached within the steps run)."""
    by_loss = next((p["step"] for p in curve if p["loss"] <= (1 + tolerance) * parent["loss"]), None)
    by_ppl = next((p["step"] for p in curve if p["perplexity"] <= (1 + tolerance) * parent["perplexity"]), None)
    return {"loss": by_loss, "perplexity": by_ppl}


def run_convert(
    study: ConvertStudy,
    parent: str,
    out: str | Path,
    cache_dir: str | None = None,
    compare: tuple[str, ...] = (),
    verbose: bool = True,
) -> dict[str, Any]:
    from tapa.model import load_config
    from tapa.study.convert_report import write_convert_report
    from tapa.train.run_dir import RunDir, checkpoint_step

    parent_config = load_config(parent)
    if parent_config.positional != "rope":
        raise ConfigError(f"study convert: {parent} is a {parent_config.positional!r} model; pass a trained RoPE run")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = printer(verbose)
    started = time.perf_counter()
    parent = str(Path(parent).resolve())
    l0 = parent_config.max_seq_len
    lengths = [l0 * f for f in study.eval_factors]
    results: dict[str, Any] = {"study": asdict(study), "parent": parent, "l0": l0, "children": {}, "compare": {}}
    results["parent_eval"] = _perplexity_stage(out, "ppl_parent", parent, lengths, study, cache_dir, log)
    parent_l0 = results["parent_eval"]["lengths"][str(l0)]
    converted = _convert_stage(out, parent, log)["run"]
    starts = {"tapa": (converted, None), "rope_yarn": (parent, None)}
    if study.tapa_at_rope_lr:
        starts["tapa_rope_lr"] = (converted, child_config(study, parent, l0, True, cache_dir).peak_lr)
    for name, (start, lr) in starts.items():
        config = child_config(study, start, l0, name == "rope_yarn", cache_dir, lr)
        trained = train_stage(out, config, f"finetune_{name}", log)
        points = [(0, start)] + [(checkpoint_step(c), str(c)) for c in RunDir(trained["run"]).checkpoints()]
        curve = []
        for step, run in points:
            if step == 0 and name == "rope_yarn":
                run = _yarn_start(out, start, config, log)
            r = _perplexity_stage(out, f"ppl_{name}_step{step}", run, [l0], study, cache_dir, log)["lengths"][str(l0)]
            curve.append({"step": step, "loss": r["loss"], "perplexity": r["perplexity"]})
        final = _perplexity_stage(out, f"ppl_{name}_final", trained["run"], lengths, study, cache_dir, log)
        results["children"][name] = {
            "train": trained,
            "lr": config.peak_lr,
            "curve": curve,
            "final": final,
            "within": steps_to_within(curve, parent_l0),
        }
    for run in compare:
        label = Path(run).parent.name if Path(run).name == "run" else Path(run).name
        results["compare"][label] = _perplexity_stage(
            out, f"ppl_compare_{label}", str(Path(run).resolve()), lengths, study, cache_dir, log
        )
    results["wall_seconds"] = time.perf_counter() - started
    write_results(out, results)
    write_convert_report(results, out)
    return results


def _yarn_start(out: Path, parent: str, config: TrainConfig, log) -> str:
    """The parent under the fine-tuning config (YaRN on), before any update: step 0 of its curve."""

    def work(directory: Path) -> dict[str, Any]:
        from tapa.data.tokenizer import copy_tokenizer_files
        from tapa.model import load_pretrained, save_pretrained
        from tapa.model.scaling import with_config

        run = directory / "run"
        save_pretrained(with_config(load_pretrained(parent), config.model), run)
        copy_tokenizer_files(Path(parent), run)
        return {"run": str(run)}

    return run_stage(out, "yarn_start", {"parent": parent, "model": config.model.to_dict()}, work, log)["run"]
