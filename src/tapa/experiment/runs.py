"""The skeleton every experiment shares: train a stage, describe the machine, write results."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from tapa.train.config import TrainConfig
from tapa.train.run_dir import RunDir
from tapa.train.trainer import run_training
from tapa.utils.files import atomic_write_text

RESULTS_FILE = "results.json"


def train_in(config: TrainConfig, directory: Path) -> dict[str, Any]:
    """Train ``config`` into ``directory/run`` as a stage's work: resume from the last
    checkpoint when an earlier attempt was killed, start over when it died before one."""
    run = directory / "run"
    config = config.replace(out=str(run))
    started = RunDir(run).started()
    resume = "latest" if started and RunDir(run).checkpoints() else None
    if started and resume is None:  # killed before its first checkpoint: start over
        shutil.rmtree(run)
    result = run_training(config, resume=resume, progress=False)
    return {
        "run": str(run),
        "val_loss": result.val_loss,
        "val_bpb": result.val_bpb,
        "tokens": result.tokens,
        "tokens_per_second": result.tokens_per_second,
        "train_seconds": result.seconds,
    }


def environment() -> dict[str, Any]:
    """Python, torch, CPU architecture, torch threads and the GPU (None on CPU)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(out: Path, results: dict[str, Any]) -> Path:
    """``OUT/results.json`` (indented, floats as JSON numbers), written atomically."""
    path = Path(out) / RESULTS_FILE
    atomic_write_text(path, json.dumps(results, indent=1, default=float) + "\n")
    return path
