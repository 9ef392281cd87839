"""Save and load a model: ``config.json`` + ``model.safetensors`` in one directory."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tapa.errors import CheckpointError, ConfigError
from tapa.model.config import ModelConfig
from tapa.model.transformer import TapaLM
from tapa.utils.files import atomic_write
from tapa.utils.manifest import verify_manifest, write_manifest

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def _unique_state(model: TapaLM) -> dict[str, torch.Tensor]:
    """State dict without the tied lm_head (safetensors refuses shared storage)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_pretrained(model: TapaLM, directory: str | Path) -> Path:
    """Write config and weights; each file is written to a temporary name and renamed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_text = model.config.to_json()
    atomic_write(directory / CONFIG_FILE, lambda p: Path(p).write_text(config_text))
    state = _unique_state(model)
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(state, p, metadata={"format": "pt"}))
    # the weights' size and SHA-256, checked by every load_pretrained (config.json stays editable)
    write_manifest(directory, [WEIGHTS_FILE])
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint: no such directory {directory}; pass a directory written by save_pretrained")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} is missing; the directory is not a tapa checkpoint")
    try:
        return ModelConfig.from_json(path.read_text())
    except ConfigError as err:
        raise CheckpointError(f"checkpoint: {path}: {err}") from None


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu") -> TapaLM:
    """Rebuild the model from ``config.json`` and load ``model.safetensors``."""
    directory = Path(directory)
    config = load_config(directory)
    verify_manifest(directory, required=False)  # sizes and SHA-256 when the folder has a manifest
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} is missing; re-save the model or use another checkpoint")
    try:
        state = load_file(path, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint: {path} is corrupt or truncated ({reason})") from None
    model = TapaLM(config)
    expected = _unique_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint: {path} does not match config.json (missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint: {path}: {name} has shape {tuple(tensor.shape)}, config expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return model.to(map_location)
