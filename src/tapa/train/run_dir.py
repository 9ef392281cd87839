"""The layout of a training run's folder, in one place.

::

    RUN/
      train_config.json        the run's TrainConfig (written when it starts)
      metrics.jsonl            one JSON line per step and evaluation
      tokenizer files          the run's tokenizer (tapa.data.tokenizer)
      checkpoints/step_N/      complete checkpoints (each with a manifest), oldest first
      config.json, model.safetensors   the final model (written when it finishes)

Every module that asks "is this a run?", "where are its checkpoints?" or "is this folder
inside a run's checkpoints?" asks :class:`RunDir`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tapa.utils.manifest import MANIFEST_FILE

TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
PREFIX = "step_"
MODEL_FILE = "model.safetensors"


def checkpoint_step(path: Path) -> int:
    """N of a ``step_N`` checkpoint folder."""
    return int(path.name.removeprefix(PREFIX))


@dataclass(frozen=True)
class RunDir:
    """A training run's folder (it need not exist yet)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config_file(self) -> Path:
        return self.path / TRAIN_CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint_root(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    def started(self) -> bool:
        """A run was started here (its train_config.json is written before any step)."""
        return self.config_file.is_file()

    def holds_run(self) -> bool:
        """A run (started, or with a checkpoints folder) lives here: never overwritten."""
        return self.config_file.exists() or self.checkpoint_root.is_dir()

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (those with a manifest), oldest first."""
        root = self.checkpoint_root
        if not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
        return sorted((p for p in found if (p / MANIFEST_FILE).is_file()), key=checkpoint_step)

    def finished(self, steps: int, checkpoints: list[Path] | None = None) -> bool:
        """The last checkpoint reached ``steps`` and the final model is written."""
        done = self.checkpoints() if checkpoints is None else checkpoints
        return bool(done) and checkpoint_step(done[-1]) >= steps and self.model_file.is_file()

    @staticmethod
    def owning(path: str | Path) -> RunDir | None:
        """The run whose checkpoints folder ``path`` lies in (RUN/checkpoints/...), if any."""
        for parent in Path(path).absolute().parents:
            if parent.name == CHECKPOINT_DIR and (parent.parent / TRAIN_CONFIG_FILE).is_file():
                return RunDir(parent.parent)
        return None
