"""One recall training run with any study field overridden: the probes behind the choice of
the recall study's task (docs/study.md, section 4).

Trains one model with ``tapa study recall``'s own training loop (at any peak LR),
printing the mean training loss every 100 steps, then the accuracy at 1x, 2x, 4x and 8x
L0 on 128 random sequences. ``study=NAME`` picks the base study (``pairs`` or
``default``); ``task_FIELD=N`` overrides a task field, ``FIELD=N`` a study field:

    OMP_NUM_THREADS=1 python scripts/recall_probe.py study=pairs method=rope lr=2e-3 batch_size=128 steps=2500
    OMP_NUM_THREADS=1 python scripts/recall_probe.py study=pairs method=rope lr=2e-3 batch_size=128 steps=2500 \\
        task_repeat_queries=1
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from tapa.evaluate.recall import score
from tapa.study.recall import STUDIES, train_recall


def main(argv: list[str]) -> None:
    args = dict(a.split("=", 1) for a in argv)
    study = STUDIES[args.pop("study", "pairs")]
    method, lr, seed = args.pop("method", "rope"), float(args.pop("lr", "2e-3")), int(args.pop("seed", "0"))
    task_kw = {k[5:]: int(v) for k, v in args.items() if k.startswith("task_")}
    study = dataclasses.replace(study, **{k: int(v) for k, v in args.items() if not k.startswith("task_")})
    if task_kw:
        study = dataclasses.replace(study, task=dataclasses.replace(study.task, **task_kw))
    start, window = time.time(), []

    def report(step: int, loss: float) -> None:
        window.append(loss)
        if (step + 1) % 100 == 0:
            print(
                f"{method} step {step + 1} loss {sum(window[-100:]) / 100:.3f} ({time.time() - start:.0f} s)",
                flush=True,
            )

    model, _ = train_recall(study, method, seed, lr=lr, on_step=report)
    model.eval()
    g = torch.Generator().manual_seed(5)
    for factor in (1, 2, 4, 8):
        batch = study.task.training_batch(128, study.seq_len * factor, g)
        with torch.no_grad():
            result = score(model, study.task, batch)
        print(f"{method} length {study.seq_len * factor}: accuracy {result.accuracy:.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
