"""``tapa reproduce``: the paper's comparisons at small scale, as cached stages.

Order: pretrain at L0 -> zero-shot perplexity L0/4..16 L0 (Table 2, with inference-time
PI/YaRN/NTK for RoPE) -> fine-tune at 4 L0 -> perplexity after fine-tuning (Table 1) ->
phase ablation (Table 3, from the fine-tuned quadratic and linear TAPA) -> alpha x theta
grid -> passkey -> Appendix I bias -> theory -> verdicts -> report.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from tapa.data.sources import load_corpus
from tapa.data.tokenizer import Bytes, HFTokenizer, Tokenizer, load_tokenizer_file
from tapa.evaluate.heldout import heldout_documents
from tapa.evaluate.perplexity import evaluate_perplexity
from tapa.experiment.runs import environment, train_in, write_results
from tapa.experiment.stages import printer, run_stage
from tapa.model import ModelConfig, load_pretrained
from tapa.model.scaling import scaled_model_config, with_config
from tapa.reproduce.presets import Preset
from tapa.train.config import TrainConfig
from tapa.utils.jsonfile import read_json_object

ROPE_BASE = 1e4
BIG_BASE_FACTOR = 400  # the paper's 2e8 / 5e5
SCALE_FACTOR = 8  # PI and YaRN factor, as in the paper
FINETUNE_SOURCES = {
    "rope": ("rope", {}),
    "rope_big_base": ("rope", {"rope_base": ROPE_BASE * BIG_BASE_FACTOR}),
    "pi": ("rope", {"pi": SCALE_FACTOR}),
    "yarn": ("rope", {"yarn": SCALE_FACTOR}),
    "tapa": ("tapa", {}),
    "tapa_linear": ("tapa_linear", {}),
    "nope": ("nope", {}),
    "alibi": ("alibi", {}),
    "rope_partial": ("rope_partial", {}),
    "tapa_full": ("tapa_full", {}),
}
PARTIAL_ROTARY_FACTOR = 0.5  # the rope_partial control: RoPE on half of each head, no position on the rest
# TAPA at other phase scales s (cos(s |m-n|^alpha q_P.k_P / sqrt(D_P)); the paper's is 2 pi):
# 1 as in the public forward-only code, 0 = the phase switched off (NoPE on the amplitude half)
PHASE_SCALE_METHODS = {"tapa_unscaled": 1.0, "tapa_phase_off": 0.0}


def model_config(method: str, preset: Preset) -> ModelConfig:
    kwargs: dict[str, Any] = {
        "d_model": preset.d_model,
        "n_layers": preset.n_layers,
        "n_heads": preset.n_heads,
        "max_seq_len": preset.seq_len,
        "rope_base": ROPE_BASE,
    }
    if preset.head_dim is not None:
        kwargs["head_dim"] = preset.head_dim
    if method.startswith("tapa_a"):  # grid point tapa_a{alpha}_t{theta}
        alpha, theta = method.removeprefix("tapa_a").split("_t")
        return ModelConfig(positional="tapa", tapa_alpha=float(alpha), tapa_theta=float(theta), **kwargs)
    if method in PHASE_SCALE_METHODS:
        return ModelConfig(positional="tapa", tapa_phase_scale=PHASE_SCALE_METHODS[method], **kwargs)
    if method == "tapa_linear":
        return ModelConfig(positional="tapa", tapa_phase="linear", **kwargs)
    if method == "tapa_full":
        return ModelConfig(positional="tapa", tapa_phase="quadratic_full", **kwargs)
    if method == "rope_partial":
        return ModelConfig(positional="rope", partial_rotary_factor=PARTIAL_ROTARY_FACTOR, **kwargs)
    return ModelConfig(positional=method, **kwargs)


def pretrain_config(preset: Preset, method: str, seed: int, tokenizer_spec: str, cache_dir: str | None) -> TrainConfig:
    """The pretraining run of ``method`` at ``seed`` (its stage key is derived from it)."""
    p = preset
    return TrainConfig(
        seq_len=p.seq_len,
        batch_size=p.batch_size,
        steps=p.pretrain_steps,
        seed=seed,
        eval_every=0,
        save_every=max(1, p.pretrain_steps // 4),
        eval_segments=32,
        cache_dir=cache_dir,
        model=model_config(method, p),
        tokenizer=tokenizer_spec,
        lr=p.peak_lr(method),
        precision=p.precision,
        compile=p.compile,
    )


class Reproduction:
    def __init__(self, preset: Preset, out: Path, cache_dir: str | None = None, verbose: bool = True) -> None:
        self.preset, self.out, self.cache_dir, self.verbose = preset, out, cache_dir, verbose
        self.log = printer(verbose)
        self.tokenizer_spec, tokenizer = preset_tokenizer(preset, out)
        self.docs = heldout_documents(tokenizer, "books", "test", preset.eval_tokens, cache_dir)

    # -- stages -------------------------------------------------------------------------------
    def pretrain(self, method: str, seed: int) -> dict[str, Any]:
        config = pretrain_config(self.preset, method, seed, self.tokenizer_spec, self.cache_dir)
        return run_stage(
            self.out,
            f"pretrain_{method}_s{seed}",
            {"train": config.to_dict()},
            lambda d: self._train(config, d),
            self.log,
        )

    def finetune(self, method: str, seed: int, base_run: str) -> dict[str, Any]:
        p = self.preset
        source, scaling = FINETUNE_SOURCES[method]
        base = load_pretrained(base_run).config
        model = scaled_model_config(base, p.finetune_len, **scaling)
        config = TrainConfig(
            seq_len=p.finetune_len,
            batch_size=max(1, p.batch_size // 4),
            steps=p.finetune_steps,
            seed=seed,
            eval_every=0,
            save_every=max(1, p.finetune_steps // 2),
            eval_segments=8,
            init_from=base_run,
            tokenizer=base_run,
            cache_dir=self.cache_dir,
            model=model,
            precision=p.precision,
            compile=p.compile,
        )
        return run_stage(
            self.out,
            f"finetune_{method}_s{seed}",
            {"train": config.to_dict(), "from": source},
            lambda d: self._train(config, d),
            self.log,
        )

    def _train(self, config: TrainConfig, directory: Path) -> dict[str, Any]:
        return train_in(config, directory)

    def perplexity(self, name: str, run: str, lengths: list[int], scaling: dict[str, float] | None = None):
        """Perplexity at each length. ``scaling`` ({"pi": 8}) applies inference-time RoPE scaling
        with factor min(8, L / L_train) at length L: none at or below the training length (as in
        the paper's Table 2, where PI and YaRN equal RoPE there), the full factor from 8x on."""

        def work(_directory: Path) -> dict[str, Any]:
            trained = load_pretrained(run)
            rows = {}
            for length in lengths:
                model, factor = trained, 1.0
                if scaling:
                    ((kind, cap),) = scaling.items()
                    factor = max(1.0, min(cap, length / trained.config.max_seq_len))
                    if factor > 1:
                        config = scaled_model_config(
                            trained.config, trained.config.max_seq_len, **{kind: factor}, context="reproduce"
                        )
                        model = with_config(trained, config)
                start = time.perf_counter()
                r = evaluate_perplexity(model.eval(), self.docs, length, max(1, length // 4), batch_size=4)
                rows[str(length)] = {
                    "perplexity": r.perplexity,
                    "tokens": r.tokens,
                    "windows": r.windows,
                    "seconds": time.perf_counter() - start,
                    "scale_factor": factor,
                }
            return {"lengths": rows}

        key = {"run": run, "lengths": lengths, "scaling": scaling, "eval_tokens": self.preset.eval_tokens}
        if scaling:
            key["per_length"] = True  # factor min(cap, L / L_train); earlier runs used the cap at every length
        return run_stage(self.out, name, key, work, self.log)


def preset_tokenizer(preset: Preset, out: Path) -> tuple[str, Tokenizer]:
    """The preset's tokenizer and the spec every training stage gets: ``"byte"``, or a BPE
    trained once on the training books and kept at ``OUT/tokenizer/tokenizer.json`` (every
    method then shares one vocabulary; a re-run reuses it)."""
    if preset.tokenizer == "byte":
        return "byte", Bytes()
    path = out / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        trained = HFTokenizer.train_bpe(load_corpus("books").documents("train"), preset.bpe_vocab)
        staging = out / "tokenizer.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        trained.save(staging)
        staging.rename(path.parent)
    return str(path), load_tokenizer_file(path)


def stage_seconds(results: Any) -> float:
    """Total wall time of the stage results inside ``results`` (stage results carry
    ``seconds`` and ``peak_memory_mib``; their insides are not counted twice)."""
    if isinstance(results, dict):
        if "seconds" in results and "peak_memory_mib" in results:
            return float(results["seconds"])
        return sum(stage_seconds(v) for v in results.values())
    return 0.0


def run_reproduce(preset: Preset, out: str | Path, cache_dir: str | None = None, verbose: bool = True) -> dict:
    from tapa.reproduce.extras import bias_stage, passkey_stage, plot_perplexity, positions_stage, theory_stage
    from tapa.reproduce.report import write_report
    from tapa.reproduce.verdicts import all_verdicts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rep = Reproduction(preset, out, cache_dir, verbose)
    lengths = preset.eval_lengths
    results: dict[str, Any] = {
        "preset": preset.to_dict(),
        "environment": environment(),
        "pretrain": {},
        "zero_shot": {},
        "finetune": {},
        "finetuned": {},
        "grid": {},
        "passkey": {},
    }
    grid_methods = [f"tapa_a{a:g}_t{t:g}" for a, t in preset.alpha_theta_grid]
    for seed in preset.seeds:
        rep.log(f"seed {seed}: pretraining at {preset.seq_len} tokens")
        first = seed == preset.seeds[0]  # the alpha x theta grid and passkey run for the first seed only
        for method in (*preset.pretrain, *(grid_methods if first else ())):
            if not preset.runs_for_seed(method, seed):
                continue
            res = rep.pretrain(method, seed)
            results["pretrain"].setdefault(method, {})[str(seed)] = res
            target = results["grid" if method in grid_methods else "zero_shot"]
            target.setdefault(method, {})[str(seed)] = rep.perplexity(f"ppl_{method}_s{seed}", res["run"], lengths)
        if "rope" in preset.pretrain:
            for name in preset.zero_shot_scaling:
                ppl = rep.perplexity(
                    f"ppl_rope_{name}_s{seed}",
                    results["pretrain"]["rope"][str(seed)]["run"],
                    lengths,
                    {name: SCALE_FACTOR},
                )
                results["zero_shot"].setdefault(f"rope+{name}", {})[str(seed)] = ppl
        rep.log(f"seed {seed}: fine-tuning at {preset.finetune_len} tokens")
        for method in preset.finetune:
            source = FINETUNE_SOURCES[method][0]
            if str(seed) not in results["pretrain"].get(source, {}) or not preset.runs_for_seed(method, seed):
                continue
            base = results["pretrain"][source][str(seed)]["run"]
            res = rep.finetune(method, seed, base)
            results["finetune"].setdefault(method, {})[str(seed)] = res
            results["finetuned"].setdefault(method, {})[str(seed)] = rep.perplexity(
                f"ppl_ft_{method}_s{seed}", res["run"], lengths
            )
            if preset.passkey_steps and first:
                results["passkey"].setdefault(method, {})[str(seed)] = passkey_stage(rep, method, seed, res["run"])
    seed0 = str(preset.seeds[0])
    results["bias"] = bias_stage(
        rep,
        {
            m: {seed: r["run"] for seed, r in results["pretrain"][m].items()}
            for m in ("rope", "tapa", "nope")
            if m in results["pretrain"]
        },
    )
    results["positions"] = positions_stage(rep, {m: results["pretrain"][m][seed0]["run"] for m in preset.pretrain})
    results["theory"] = theory_stage(rep)
    (out / "figures").mkdir(exist_ok=True)
    plot_perplexity(results, out / "figures" / "perplexity_by_length.png")
    results["verdicts"] = all_verdicts(results)
    results["wall_seconds"] = time.perf_counter() - started  # this invocation (short when stages were cached)
    results["stage_seconds"] = stage_seconds(results)  # all stages, whenever they ran
    write_results(out, results)
    write_report(results, out)
    return results


def rejudge(out: str | Path) -> dict:
    """The verdicts of a finished reproduction recomputed with the current rules, and its
    report rewritten; nothing is trained or evaluated (``tapa reproduce --rejudge``)."""
    from tapa.errors import ConfigError
    from tapa.reproduce.report import write_report
    from tapa.reproduce.verdicts import all_verdicts

    out = Path(out)
    path = out / "results.json"
    if not path.is_file():
        raise ConfigError(f"--rejudge: {out} has no results.json; run tapa reproduce --out {out} first")
    results = read_json_object(path, "--rejudge")
    try:
        results["verdicts"] = all_verdicts(results)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"--rejudge: {path} is not a reproduce results file ({type(err).__name__}: {err})") from None
    write_results(out, results)
    write_report(results, out)
    return results
