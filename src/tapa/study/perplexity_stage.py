"""One cached stage shared by the studies: a trained run's perplexity on the test book at
several lengths (sliding windows, stride = window / 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapa.experiment.stages import run_stage


def perplexity_stage(
    out: Path, name: str, run: str, lengths: list[int], eval_tokens: int, cache_dir: str | None, log
) -> dict[str, Any]:
    """``{"lengths": {L: {"perplexity", "loss", "tokens"}}}`` on the first ``eval_tokens``
    tokens of the test book, tokenized by the run's own tokenizer."""

    def work(_directory: Path) -> dict[str, Any]:
        from tapa.data.tokenizer import load_checkpoint_tokenizer
        from tapa.evaluate.heldout import heldout_documents
        from tapa.evaluate.perplexity import evaluate_perplexity
        from tapa.model import load_pretrained

        docs = heldout_documents(load_checkpoint_tokenizer(run), "books", "test", eval_tokens, cache_dir)
        model = load_pretrained(run).eval()
        rows = {}
        for length in lengths:
            r = evaluate_perplexity(model, docs, length, max(1, length // 4), batch_size=4)
            rows[str(length)] = {"perplexity": r.perplexity, "loss": r.loss, "tokens": r.tokens}
        return {"lengths": rows}

    return run_stage(out, name, {"run": run, "lengths": lengths, "eval_tokens": eval_tokens}, work, log)
