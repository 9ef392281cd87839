"""Train small models on a recall task at L0 and test them at 1x..16x L0: segment recall
(:mod:`tapa.evaluate.segment_recall`, the default) or key-value pairs in filler
(:mod:`tapa.evaluate.recall`, study ``pairs``). Tests the abstract's claim that TAPA
"preserves token interactions over long range": the planted pair can sit anywhere in a
context up to 16x longer than any seen in training.

Each (method, seed) trains from scratch as one cached stage (a few minutes; a killed stage
starts over), then is scored at every length on the same evaluation sequences, with the
queried pairs spread over all depths (stratified), so accuracy is reported by length and
by depth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tapa.evaluate.recall import RecallTask, score
from tapa.evaluate.segment_recall import SegmentTask
from tapa.experiment.runs import write_results
from tapa.experiment.stages import printer, run_stage
from tapa.model import ModelConfig, TapaLM
from tapa.train.config import DEFAULT_LR
from tapa.train.recipe import make_optimizer, make_schedule, update

DEPTH_BINS = 5


@dataclass(frozen=True)
class RecallStudy:
    task: RecallTask | SegmentTask = field(default_factory=SegmentTask)
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    seq_len: int = 32  # L0
    batch_size: int = 64
    steps: int = 2000
    warmup: int = 100
    eval_sequences: int = 256
    length_factors: tuple[int, ...] = (1, 2, 4, 8, 16)
    methods: tuple[str, ...] = ("rope", "tapa", "nope", "alibi")
    seeds: tuple[int, ...] = (0, 1, 2)


PAIRS = RecallTask(n_keys=32, n_values=32, n_filler=32, n_pairs=4, n_queries=4)
STUDIES = {
    "default": RecallStudy(),
    # the same task at twice the training length (gaps of 0..48 tokens in training), to 8 x L0
    "l0-64": RecallStudy(seq_len=64, length_factors=(1, 2, 4, 8)),
    # twice the training steps for RoPE and TAPA (does TAPA just learn the lookup later?)
    "steps-4000": RecallStudy(steps=4000, methods=("rope", "tapa")),
    # the first recall study (2026-12-01): no method got past the no-association shortcuts
    "pairs": RecallStudy(task=PAIRS, batch_size=32),
    "smoke": RecallStudy(
        task=SegmentTask(n_tokens=12, n_filler=4, segment=4),
        d_model=16,
        n_layers=1,
        seq_len=12,
        batch_size=4,
        steps=5,
        warmup=2,
        eval_sequences=8,
        length_factors=(1, 2),
        methods=("rope", "tapa"),
        seeds=(0,),
    ),
    "smoke-pairs": RecallStudy(
        task=RecallTask(n_keys=8, n_values=8, n_filler=8, n_pairs=3, n_queries=2),
        d_model=16,
        n_layers=1,
        seq_len=24,
        batch_size=4,
        steps=5,
        warmup=2,
        eval_sequences=8,
        length_factors=(1, 2),
        methods=("rope", "tapa"),
        seeds=(0,),
    ),
}


def stage_key(study: RecallStudy, method: str, seed: int) -> dict[str, Any]:
    """What a (method, seed) stage depends on: not the study's lists of methods and seeds."""
    fields = {k: v for k, v in asdict(study).items() if k not in ("methods", "seeds")}
    return {"study": fields, "method": method, "seed": seed}


def model_config(study: RecallStudy, method: str) -> ModelConfig:
    return ModelConfig(
        positional=method,
        vocab_size=study.task.vocab_size,
        d_model=study.d_model,
        n_layers=study.n_layers,
        n_heads=study.n_heads,
        max_seq_len=study.seq_len,
    )


def train_recall(
    study: RecallStudy,
    method: str,
    seed: int,
    lr: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[TapaLM, list[float]]:
    """AdamW (0.9, 0.95, no weight decay), warmup + cosine, peak LR ``lr`` (the method's
    default when None); batch i is drawn from a generator seeded by (seed, i); loss on the
    query values only. ``on_step(step, loss)`` is called after every step."""
    torch.manual_seed(seed)
    model = TapaLM(model_config(study, method))
    peak = DEFAULT_LR[method] if lr is None else lr
    params = list(model.parameters())
    opt = make_optimizer(params, peak)
    sched = make_schedule(opt, study.warmup, study.steps)
    losses = []
    for step in range(study.steps):
        g = torch.Generator().manual_seed(1_000_003 * seed + step)
        batch = study.task.training_batch(study.batch_size, study.seq_len, g)
        logits = model(batch.ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), ignore_index=-100)
        loss.backward()
        update(params, opt, sched, clip=1.0)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
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
            batch = study.task.evaluation_batch(n, length, g)
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


def _recall_stage(study: RecallStudy, out: Path, method: str, seed: int, verbose: bool) -> dict[str, Any]:
    """Train and score one (method, seed) as a cached stage (in this process or a worker)."""

    def work(directory: Path) -> dict[str, Any]:
        model, losses = train_recall(study, method, seed)
        torch.save(model.state_dict(), directory / "model.pt")
        (directory / "model_config.json").write_text(model.config.to_json() + "\n")
        return {"final_loss": sum(losses[-50:]) / len(losses[-50:]), "lengths": evaluate_recall(model, study)}

    return run_stage(out, f"recall_{method}_s{seed}", stage_key(study, method, seed), work, printer(verbose))


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def run_recall(study: RecallStudy, out: str | Path, verbose: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Every (method, seed) stage, then results.json and the report. ``jobs`` > 1 trains that
    many stages at once in worker processes, splitting the CPU threads between them (the
    models are small: one thread each uses a core better than two threads for one)."""
    from tapa.study.recall_report import write_recall_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"study": asdict(study), "chance": 1 / len(study.task.value_ids), "runs": {}}
    order = [(method, seed) for seed in study.seeds for method in study.methods]

    def record(method: str, seed: int, res: dict[str, Any]) -> None:
        results["runs"].setdefault(method, {})[str(seed)] = res
        results["wall_seconds"] = time.perf_counter() - started
        write_results(out, results)
        write_recall_report(results, out)

    if jobs <= 1:
        for method, seed in order:
            record(method, seed, _recall_stage(study, out, method, seed, verbose))
        return results
    import concurrent.futures
    import multiprocessing

    threads = max(1, torch.get_num_threads() // jobs)
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    ) as pool:
        futures = [pool.submit(_recall_stage, study, out, m, s, verbose) for m, s in order]
        for (method, seed), future in zip(order, futures, strict=True):
            record(method, seed, future.result())
    return results
