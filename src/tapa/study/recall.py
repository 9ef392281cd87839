"""Train small models on associative recall at L0 and test them at 1x..16x L0
(:mod:`tapa.evaluate.recall` defines the task). Tests the abstract's claim that TAPA
"preserves token interactions over long range": the planted pair can sit anywhere in a
context up to 16x longer than any seen in training.

Each (method, seed) trains from scratch as one cached stage (a few minutes; a killed stage
starts over), then is scored at every length on the same evaluation sequences, with the
queried pairs spread over all depths (stratified), so accuracy is reported by length and
by depth.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tapa.evaluate.recall import RecallTask, make_batch, score, stratified_depths
from tapa.model import ModelConfig, TapaLM
from tapa.reproduce.stages import printer, run_stage
from tapa.train.config import DEFAULT_LR
from tapa.train.schedule import WarmupCosine

DEPTH_BINS = 5


@dataclass(frozen=True)
class RecallStudy:
    task: RecallTask = field(default_factory=lambda: RecallTask(n_keys=32, n_values=32, n_filler=32, n_pairs=4,
                                                                 n_queries=4))  # fmt: skip
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    seq_len: int = 32  # L0
    batch_size: int = 32
    steps: int = 2000
    warmup: int = 100
    eval_sequences: int = 256
    length_factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    methods: tuple[str, ...] = ("rope", "tapa", "nope", "alibi")
    seeds: tuple[int, ...] = (0, 1, 2)


STUDIES = {
    "default": RecallStudy(),
    "smoke": RecallStudy(task=RecallTask(n_keys=8, n_values=8, n_filler=8, n_pairs=3, n_queries=2), d_model=16,
                         n_layers=1, seq_len=24, batch_size=4, steps=5, warmup=2, eval_sequences=8,
                         length_factors=(1, 2), methods=("rope", "tapa"), seeds=(0,)),
}  # fmt: skip


def model_config(study: RecallStudy, method: str) -> ModelConfig:
    return ModelConfig(positional=method, vocab_size=study.task.vocab_size, d_model=study.d_model,
                       n_layers=study.n_layers, n_heads=study.n_heads, max_seq_len=study.seq_len)  # fmt: skip


def train_recall(study: RecallStudy, method: str, seed: int) -> tuple[TapaLM, list[float]]:
    """AdamW (0.9, 0.95, no weight decay), warmup + cosine, the method's default peak LR;
    batch i is drawn from a generator seeded by (seed, i); loss on the query values only."""
    torch.manual_seed(seed)
    model = TapaLM(model_config(study, method))
    opt = torch.optim.AdamW(model.parameters(), lr=DEFAULT_LR[method], betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(study.warmup, study.steps))
    losses = []
    for step in range(study.steps):
        g = torch.Generator().manual_seed(1_000_003 * seed + step)
        batch = make_batch(study.task, study.batch_size, study.seq_len, g)
        logits = model(batch.ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses


def evaluate_recall(model: TapaLM, study: RecallStudy) -> dict[str, Any]:
    """Accuracy and mean probability of the planted value at each length, by depth bin;
    the same sequences for every model (generator seeded by the length)."""
    model.eval()
    rows: dict[str, Any] = {}
    for factor in study.length_factors:
        length = study.seq_len * factor
        g = torch.Generator().manual_seed(7919 * length)
        correct, probs, placed = [], [], []
        for start in range(0, study.eval_sequences, 32):
            n = min(32, study.eval_sequences - start)
            batch = make_batch(
                study.task, n, length, g, stratified_depths(n, study.task.n_queries, length, study.task, g)
            )
            with torch.no_grad():
                result = score(model, study.task, batch)
            correct.append(result.correct.flatten())
            probs.append(torch.tensor([result.probability] * n))
            placed.append(batch.depths.flatten())
        c, d = torch.cat(correct).double(), torch.cat(placed)
        bins = (d * DEPTH_BINS).clamp(max=DEPTH_BINS - 1).long()
        rows[str(length)] = {
            "accuracy": c.mean().item(),
            "probability": torch.cat(probs).mean().item(),
            "by_depth": [c[bins == i].mean().item() for i in range(DEPTH_BINS)],
            "queries": len(c),
        }
    return rows


def run_recall(study: RecallStudy, out: str | Path, verbose: bool = True) -> dict[str, Any]:
    from tapa.study.recall_report import write_recall_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    log = printer(verbose)

    results: dict[str, Any] = {"study": asdict(study), "chance": 1 / study.task.n_values, "runs": {}}
    for seed in study.seeds:
        for method in study.methods:

            def work(directory: Path, method: str = method, seed: int = seed) -> dict[str, Any]:
                model, losses = train_recall(study, method, seed)
                torch.save(model.state_dict(), directory / "model.pt")
                (directory / "model_config.json").write_text(model.config.to_json() + "\n")
                return {"final_loss": sum(losses[-50:]) / len(losses[-50:]), "lengths": evaluate_recall(model, study)}

            key = {"study": asdict(study), "method": method, "seed": seed}
            res = run_stage(out, f"recall_{method}_s{seed}", key, work, log)
            results["runs"].setdefault(method, {})[str(seed)] = res
            results["wall_seconds"] = time.perf_counter() - started
            (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
            write_recall_report(results, out)
    return results
