"""Where training numbers go: a JSONL file (always), TensorBoard (when installed), a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only JSONL, one object per line; ``truncate_after`` drops lines a killed run
    wrote past the checkpoint it resumes from, so the file matches an uninterrupted run."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.writer = None

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(tensorboard_tag(key), value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def tensorboard_tag(key: str) -> str:
    """Group TensorBoard's charts: ``val_loss`` -> ``val/loss``, ``loss`` -> ``train/loss``."""
    return "val/" + key.removeprefix("val_") if key.startswith("val_") else "train/" + key


def read_metrics(run_dir: str | Path, key: str = "loss") -> dict[int, float]:
    """``{step: value}`` for one metric of a run's JSONL file."""
    out = {}
    for line in (Path(run_dir) / METRICS_FILE).read_text().splitlines():
        record = json.loads(line)
        if key in record:
            out[record["step"]] = record[key]
    return out
