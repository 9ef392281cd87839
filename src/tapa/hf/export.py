"""``tapa export-hf RUN --out DIR``: a tapa RoPE run as a transformers folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tapa.data.tokenizer import load_checkpoint_tokenizer
from tapa.hf.config import REMOTE_FILES, hf_config_from_model
from tapa.hf.names import to_hf_name
from tapa.hf.tokenizers import export_tokenizer, special_ids
from tapa.model import load_pretrained
from tapa.utils.files import write_file
from tapa.utils.publish import check_empty_out, publish

REMOTE_DIR = Path(__file__).parent / "remote"


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors under transformers' names (the tied lm_head written once, as embeddings)."""
    state = model.state_dict()
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    return {to_hf_name(k): v.detach().contiguous().cpu() for k, v in state.items()}


def export_hf(run: str | Path, out: str | Path) -> Path:
    """config.json (model_type llama or qwen2, RoPE in ``rope_parameters``; or model_type tapa
    with an ``auto_map`` and the model's code beside it), model.safetensors,
    generation_config.json and the tokenizer, written to a staging folder and moved into place."""
    run, out = Path(run), Path(out)
    model = load_pretrained(run)
    tokenizer = load_checkpoint_tokenizer(run)
    ids = special_ids(tokenizer)
    config = hf_config_from_model(model.config, ids)  # refuses what Llama cannot express, before writing
    check_empty_out(out)

    def write(staging: Path) -> None:
        (staging / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        weights = staging / "model.safetensors"
        write_file(weights, lambda: save_file(hf_state_dict(model), str(weights), metadata={"format": "pt"}))
        generation = {"do_sample": False, **ids}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=1) + "\n")
        export_tokenizer(tokenizer, run, staging)
        if model.config.positional != "rope":  # the model's own code, for trust_remote_code
            for name in REMOTE_FILES:
                shutil.copy2(REMOTE_DIR / name, staging / name)

    return publish(out, write)
