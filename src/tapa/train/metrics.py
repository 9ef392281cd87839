"""Where training numbers go: a JSONL file (always), TensorBoard (when installed), Weights &
Biases (``--wandb true``, when installed; ``WANDB_MODE=offline`` logs without a network,
``WANDB_PROJECT`` names the project), a progress bar."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from tapa.train.run_dir import METRICS_FILE


class MetricsLog:
    """Append-only JSONL, one object per line; ``truncate_after`` drops lines a killed run
    wrote past the checkpoint it resumes from, so the file matches an uninterrupted run."""

    def __init__(
        self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, wandb_config: dict | None = None
    ) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.writer = None
        self.wandb = None
        if enabled and wandb_config is not None:
            self.wandb = start_wandb(run_dir, wandb_config)
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
        if self.wandb is not None:
            values = {tensorboard_tag(k): v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
            self.wandb.log(values, step=record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


WANDB_ID_FILE = "wandb_id"


def check_wandb() -> None:
    """``--wandb true`` needs the package: say so before anything is written."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        from tapa.errors import ConfigError

        raise ConfigError(
            "wandb: the wandb package is not installed; pip install 'tapa[wandb]' or drop --wandb"
        ) from None


def start_wandb(run_dir: Path, config: dict):
    """One W&B run per tapa run: its id is kept in the run folder, so a resumed run continues it."""
    import wandb

    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:16]
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "tapa"),
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
    )


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
