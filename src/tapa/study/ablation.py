"""The ablation ladder: which difference between our small runs and the paper's setup
explains TAPA's gap to RoPE at the training length?

Each cell fixes a tokenizer (bytes or a BPE trained on the training books), a head width,
a learning-rate rule and a training budget, and trains RoPE, TAPA and NoPE from scratch
(same data order, same initial seed). The measured quantity is the ratio of validation
perplexities at L0, ``ppl_TAPA / ppl_RoPE = exp(loss_TAPA - loss_RoPE)`` (per token of the
cell's tokenizer), with NoPE's ratio beside it: a TAPA ratio near NoPE's says TAPA's
positional signal is not being used. Cells vary one axis at a time from the small preset's
regime (bytes, head_dim 24) towards the paper's (BPE, head_dim 128, TAPA LR = RoPE LR / 5,
more tokens), so each step of the ladder can be read alone. Stages are cached like
``tapa reproduce``'s: identical runs (RoPE is the same in every LR cell) train once, and a
killed ladder resumes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tapa.experiment.runs import train_in, write_results
from tapa.experiment.stages import printer, run_stage
from tapa.model import ModelConfig
from tapa.train.config import DEFAULT_LR, TrainConfig
from tapa.train.run_dir import RunDir, checkpoint_step

METHODS = ("rope", "tapa", "nope")
BPE_VOCAB = 2048  # see docs/study.md: ~3.5 bytes per token; embeddings stay below the layers' parameters
LR_RULES = {
    "default": "each method's default peak LR (RoPE/NoPE 2e-3, TAPA 1e-3; the byte-level sweep)",
    "paper": "TAPA at RoPE's LR / 5 (4e-4), the paper's ratio",
    "equal": "TAPA at RoPE's LR (2e-3)",
}  # cells named ...-alpha* change TAPA's alpha only (default LR)


@dataclass(frozen=True)
class Cell:
    name: str
    tokenizer: str  # "byte" or "bpe"
    head_dim: int
    lr_rule: str = "default"
    steps: int = 400
    methods: tuple[str, ...] = METHODS
    alpha: float = 0.1  # TAPA's distance exponent (the paper's 0.1 unless a cell varies it)

    def n_heads(self, d_model: int) -> int:
        """As many heads as fit in d_model (inner width n_heads x head_dim <= d_model)."""
        return max(1, d_model // self.head_dim)

    def lr(self, method: str) -> float:
        if method == "tapa" and self.lr_rule == "paper":
            return DEFAULT_LR["rope"] / 5
        if method == "tapa" and self.lr_rule == "equal":
            return DEFAULT_LR["rope"]
        return DEFAULT_LR[method]


@dataclass(frozen=True)
class Ladder:
    d_model: int = 128
    n_layers: int = 3
    seq_len: int = 128
    batch_size: int = 16
    eval_segments: int = 128
    cells: tuple[Cell, ...] = ()
    seeds: tuple[int, ...] = (0,)
    # cells re-run with these extra seeds (the decisive ones)
    seeded_cells: tuple[str, ...] = ()
    extra_seeds: tuple[int, ...] = ()
    seeds_after: str | None = None  # the extra seeds run after this cell (None: after every cell)
    seeded_methods: tuple[str, ...] = METHODS  # the methods the extra seeds run


# in priority order: a ladder cut short still answers the first questions
LADDER_CELLS = (
    Cell("byte-hd24", "byte", 24),  # the small preset's regime
    Cell("bpe-hd128", "bpe", 128),  # the paper's geometry
    Cell("byte-hd128", "byte", 128),
    Cell("bpe-hd24", "bpe", 24),
    Cell("bpe-hd128-lr-paper", "bpe", 128, lr_rule="paper", methods=("tapa",)),
    Cell("bpe-hd128-lr-equal", "bpe", 128, lr_rule="equal", methods=("tapa",)),
    Cell("bpe-hd128-alpha0.5", "bpe", 128, alpha=0.5, methods=("tapa",)),
    Cell("bpe-hd128-alpha1", "bpe", 128, alpha=1.0, methods=("tapa",)),
    Cell("bpe-hd128-4x", "bpe", 128, steps=1600, methods=("rope", "tapa")),
    Cell("bpe-hd64", "bpe", 64),
    Cell("byte-hd24-4x", "byte", 24, steps=1600),
)
LADDERS = {
    "default": Ladder(
        cells=LADDER_CELLS,
        seeded_cells=("bpe-hd128",),
        extra_seeds=(1, 2),
        seeds_after="bpe-hd128-4x",
        seeded_methods=("rope", "tapa"),
    ),
    "smoke": Ladder(
        d_model=32,
        n_layers=1,
        seq_len=32,
        batch_size=4,
        eval_segments=8,
        cells=(Cell("byte-hd16", "byte", 16, steps=6), Cell("bpe-hd32", "bpe", 32, steps=6)),
        seeded_cells=("byte-hd16",),
        extra_seeds=(1,),
    ),
}


def train_config(ladder: Ladder, cell: Cell, method: str, seed: int, cache_dir: str | None) -> TrainConfig:
    model = ModelConfig(
        positional=method,
        d_model=ladder.d_model,
        n_layers=ladder.n_layers,
        n_heads=cell.n_heads(ladder.d_model),
        head_dim=cell.head_dim,
        max_seq_len=ladder.seq_len,
    )
    if method == "tapa" and cell.alpha != ModelConfig.tapa_alpha:
        model = model.replace(tapa_alpha=cell.alpha)
    return TrainConfig(
        tokenizer=cell.tokenizer,
        bpe_vocab_size=BPE_VOCAB,
        seq_len=ladder.seq_len,
        batch_size=ladder.batch_size,
        steps=cell.steps,
        lr=cell.lr(method),
        seed=seed,
        eval_every=0,
        save_every=max(1, cell.steps // 4),
        eval_segments=ladder.eval_segments,
        cache_dir=cache_dir,
        model=model,
    )


def train_stage(out: Path, config: TrainConfig, name: str, log) -> dict[str, Any]:
    """A cached training stage (resumes from its last checkpoint when killed)."""
    return run_stage(out, name, {"train": config.to_dict()}, lambda d: train_in(config, d), log)


def diagnose_stage(out: Path, run: str, cache_dir: str | None, log) -> dict[str, Any]:
    """Mechanism diagnostics of a trained run (cached): the summary and the full result of the
    final model, and the summary of each kept checkpoint (how the patterns formed in training)."""
    from tapa.study.diagnostics import diagnose_run, summary

    def work(_directory: Path) -> dict[str, Any]:
        full = diagnose_run(run, cache_dir=cache_dir)
        steps = {}
        for checkpoint in RunDir(run).checkpoints():
            steps[str(checkpoint_step(checkpoint))] = summary(diagnose_run(str(checkpoint), cache_dir=cache_dir))
        return {"summary": summary(full), "full": full, "checkpoints": steps}

    return run_stage(out, "diagnose", {"run": run, "checkpoints": True}, work, log)


def ratio(loss: float, baseline: float) -> float:
    """Perplexity ratio exp(loss - baseline): > 1 means worse than the baseline."""
    return math.exp(loss - baseline)


def summarise(
    runs: dict[str, dict[str, dict[str, Any]]], cells: tuple[Cell, ...], d_model: int
) -> list[dict[str, Any]]:
    """One row per cell: per-method validation loss and bits/byte averaged over the seeds that
    ran, the TAPA/RoPE and NoPE/RoPE perplexity ratios (RoPE from the same cell's geometry)."""
    rows = []
    for cell in cells:
        per = runs.get(cell.name, {})
        row: dict[str, Any] = {**asdict(cell), "methods": list(cell.methods), "n_heads": cell.n_heads(d_model)}
        for method in METHODS:
            seeds = per.get(method, {})
            if not seeds:
                continue
            losses = [r["val_loss"] for r in seeds.values()]
            row[method] = {
                "val_loss": sum(losses) / len(losses),
                "val_bpb": sum(r["val_bpb"] for r in seeds.values()) / len(seeds),
                "seeds": sorted(seeds),
                "losses": losses,
                "lr": cell.lr(method),
            }
        if "rope" in row:
            for method in ("tapa", "nope"):
                if method in row:
                    row[f"{method}_over_rope"] = ratio(row[method]["val_loss"], row["rope"]["val_loss"])
        rows.append(row)
    return rows


def run_ladder(ladder: Ladder, out: str | Path, cache_dir: str | None = None, verbose: bool = True) -> dict[str, Any]:
    from tapa.study.ablation_report import write_ablation_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    log = printer(verbose)

    runs: dict[str, dict[str, dict[str, Any]]] = {}
    diagnostics: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {"ladder": asdict(ladder), "lr_rules": LR_RULES, "bpe_vocab": BPE_VOCAB}

    def record() -> None:
        cells = ladder.cells
        results["runs"] = runs
        results["diagnostics"] = diagnostics
        results["rows"] = summarise(runs, cells, ladder.d_model)
        results["wall_seconds"] = time.perf_counter() - started
        write_results(out, results)
        write_ablation_report(results, out)

    extra = [(cell, seed) for seed in ladder.extra_seeds for cell in ladder.cells if cell.name in ladder.seeded_cells]
    plan = []
    for cell in ladder.cells:
        plan += [(cell, seed) for seed in ladder.seeds]
        if cell.name == ladder.seeds_after:
            plan, extra = plan + extra, []
    plan += extra
    for cell, seed in plan:
        log(f"cell {cell.name}, seed {seed}")
        methods = cell.methods if seed in ladder.seeds else tuple(m for m in cell.methods if m in ladder.seeded_methods)
        if "rope" not in cell.methods:  # a TAPA-only LR cell is read against the same geometry's RoPE and NoPE
            methods = ("rope", "nope", *methods)
        for method in methods:
            lr_cell = (
                cell if method in cell.methods else Cell(cell.name, cell.tokenizer, cell.head_dim, steps=cell.steps)
            )
            config = train_config(ladder, lr_cell, method, seed, cache_dir)
            res = train_stage(out, config, f"train_{method}_s{seed}", log)
            runs.setdefault(cell.name, {}).setdefault(method, {})[str(seed)] = res
            if seed == ladder.seeds[0]:
                diagnostics.setdefault(cell.name, {})[method] = diagnose_stage(out, res["run"], cache_dir, log)
        record()
    record()
    return results
