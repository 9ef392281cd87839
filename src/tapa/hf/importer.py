"""``tapa import-hf DIR --out RUN``: a Llama-architecture transformers folder as a tapa run.

Reads ``config.json`` (see :mod:`tapa.hf.config`), one ``model.safetensors`` or the shards
listed in ``model.safetensors.index.json``, and the tokenizer. The model is built on the
meta device and the checkpoint's tensors are assigned to it, so no random initialisation
is computed and peak memory is about one copy of the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from tapa.data.tokenizer import HF_FILE, SP_FILE
from tapa.errors import CheckpointError
from tapa.hf.config import model_config_from_hf, switch_positional
from tapa.hf.names import from_hf_name
from tapa.hf.publish import check_empty_out, publish
from tapa.model import ModelConfig, TapaLM, save_pretrained

INDEX_FILE = "model.safetensors.index.json"


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"import-hf: no such folder {directory}")
    if not path.is_file():
        raise CheckpointError(f"import-hf: {directory} has no config.json; pass a transformers model folder")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"import-hf: {path} is not valid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"import-hf: {path} is not a JSON object")
    return data


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a folder: one file, or every shard its index names (all present)."""
    if (directory / INDEX_FILE).is_file():
        index = json.loads((directory / INDEX_FILE).read_text())
        names = sorted(set(index.get("weight_map", {}).values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"import-hf: shard(s) {', '.join(missing)} listed in {INDEX_FILE} are missing")
        return [directory / n for n in names]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    raise CheckpointError(f"import-hf: {directory} has no model.safetensors (or {INDEX_FILE}); "
                          "convert .bin weights to safetensors first")  # fmt: skip


def load_hf_model(directory: str | Path, positional: str | None = None) -> tuple[TapaLM, ModelConfig]:
    """The tapa model of a transformers folder; ``positional`` switches the attention and
    keeps every weight (see :func:`switch_positional`)."""
    directory = Path(directory)
    config = model_config_from_hf(read_hf_config(directory))
    if positional is not None:
        config = switch_positional(config, positional)
    with torch.device("meta"):
        model = TapaLM(config)
    expected = dict(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                ours = from_hf_name(name)
                if ours is not None:
                    state[ours] = f.get_tensor(name)
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise CheckpointError(f"import-hf: the weights lack {', '.join(missing[:3])}{more}; "
                              "not a complete Llama-architecture model")  # fmt: skip
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"import-hf: {name} has shape {tuple(tensor.shape)}, config.json implies "
                                  f"{tuple(expected[name].shape)}")  # fmt: skip
    model.load_state_dict({k: v.float() for k, v in state.items() if k in expected}, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.rebuild_buffers()
    return model.eval(), config


def import_hf(directory: str | Path, out: str | Path, positional: str | None = None) -> Path:
    """Write the tapa run (config.json, model.safetensors, manifest, tokenizer) to ``out``."""
    import shutil

    directory, out = Path(directory), Path(out)
    check_empty_out(out)
    model, _ = load_hf_model(directory, positional)

    def write(staging: Path) -> None:
        save_pretrained(model, staging)
        for name in (HF_FILE, SP_FILE):
            if (directory / name).is_file():
                shutil.copy2(directory / name, staging / name)

    return publish(out, write)
