"""``tapa import-hf DIR|FILE.gguf --out RUN``: a Llama-architecture transformers folder, or a
GGUF file of the llama.cpp ecosystem, as a tapa run.

A folder: ``config.json`` (see :mod:`tapa.hf.config`), one ``model.safetensors`` or the shards
listed in ``model.safetensors.index.json``, and the tokenizer. The model is built on the
meta device and the checkpoint's tensors are assigned to it, so no random initialisation
is computed and peak memory is about one copy of the weights.

A ``.gguf`` file goes through transformers' own GGUF loader (the ``gguf`` package reads it and
dequantises quantised tensors to float32; transformers undoes llama.cpp's query/key row
order): its config, weights and tokenizer then take the folder path's checks and mapping.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from tapa.data.tokenizer import HF_FILE, SP_FILE
from tapa.errors import CheckpointError
from tapa.hf.config import model_config_from_hf
from tapa.hf.names import from_hf_name
from tapa.model import ModelConfig, TapaLM, save_pretrained
from tapa.model.conversion import switch_positional
from tapa.model.generation import CHAT_TEMPLATE_FILE, GENERATION_FILE, eos_list, save_generation
from tapa.utils.jsonfile import read_json_object
from tapa.utils.publish import check_empty_out, publish

INDEX_FILE = "model.safetensors.index.json"


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not directory.is_dir():
        raise CheckpointError(f"import-hf: no such folder {directory}")
    if not path.is_file():
        raise CheckpointError(f"import-hf: {directory} has no config.json; pass a transformers model folder")
    return read_json_object(path, "import-hf", CheckpointError)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a folder: one file, or every shard its index names (all present)."""
    if (directory / INDEX_FILE).is_file():
        index = read_json_object(directory / INDEX_FILE, "import-hf", CheckpointError)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"import-hf: {directory / INDEX_FILE} has no weight_map of tensor -> file names")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"import-hf: shard(s) {', '.join(missing)} listed in {INDEX_FILE} are missing")
        return [directory / n for n in names]
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    raise CheckpointError(
        f"import-hf: {directory} has no model.safetensors (or {INDEX_FILE}); convert .bin weights to safetensors first"
    )


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def _gguf_transformers(path: Path):
    """transformers' config, model and tokenizer of a GGUF file, under clean errors."""
    import importlib.util

    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise CheckpointError(
            f"import-hf: reading GGUF needs the {' and '.join(missing)} package(s): pip install -e '.[gguf]'"
        )
    if not path.is_file():
        raise CheckpointError(f"import-hf: no such file {path}")
    import transformers

    try:
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, OSError, TypeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"import-hf: {path} is not a GGUF file transformers can load ({first})") from None
    return hf, tokenizer


def _gguf_state(path: Path) -> tuple[dict, dict[str, torch.Tensor], object]:
    hf, tokenizer = _gguf_transformers(path)
    config = hf.config.to_dict()
    config.setdefault("model_type", "llama")
    return config, dict(hf.state_dict()), tokenizer


def _folder_state(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = read_hf_config(directory)
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                    tensors[name] = f.get_tensor(name)
        except (SafetensorError, OSError, ValueError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"import-hf: {path} is not a readable safetensors file ({reason})") from None
    return config, tensors


def load_hf_model(source: str | Path, positional: str | None = None) -> tuple[TapaLM, ModelConfig]:
    """The tapa model of a transformers folder or a GGUF file; ``positional`` switches the
    attention and keeps every weight (see :func:`switch_positional`)."""
    source = Path(source)
    if is_gguf(source):
        hf_config, tensors, _ = _gguf_state(source)
    else:
        hf_config, tensors = _folder_state(source)
    return build_model(hf_config, tensors, positional)


def build_model(
    hf_config: dict, tensors: dict[str, torch.Tensor], positional: str | None
) -> tuple[TapaLM, ModelConfig]:
    """A tapa model from a transformers config dict and its tensors (transformers' names)."""
    config = model_config_from_hf(hf_config)
    if positional is not None:
        config = switch_positional(config, positional)
    with torch.device("meta"):
        model = TapaLM(config)
    expected = dict(model.state_dict())
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        ours = from_hf_name(name)
        if ours is not None:
            state[ours] = tensor
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise CheckpointError(
            f"import-hf: the weights lack {', '.join(missing[:3])}{more}; not a complete Llama-architecture model"
        )
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"import-hf: {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.float() for k, v in state.items() if k in expected}, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    model.rebuild_buffers()
    return model.eval(), config


def generation_settings(source: Path, gguf_config: dict | None, tokenizer) -> tuple[list[int], str | None]:
    """(end-of-sequence ids, chat template) of the source model: for a folder from its
    generation_config.json (else config.json) and chat_template.jinja (else tokenizer_config.json);
    for a GGUF file from the config and tokenizer transformers read from it."""
    if gguf_config is not None:
        template = getattr(tokenizer, "chat_template", None)
        return eos_list(gguf_config.get("eos_token_id")), template if isinstance(template, str) else None

    def read(name: str) -> dict:
        path = source / name
        return read_json_object(path, "import-hf", CheckpointError) if path.is_file() else {}

    generation, config = read(GENERATION_FILE), read("config.json")
    eos = eos_list(generation.get("eos_token_id", config.get("eos_token_id")))
    path = source / CHAT_TEMPLATE_FILE
    template = path.read_text() if path.is_file() else read("tokenizer_config.json").get("chat_template")
    return eos, template if isinstance(template, str) else None


def check_tokenizer_files(directory: Path) -> None:
    """A tokenizer beside the weights must load now, not fail later in generate."""
    from tapa.data.tokenizer import load_checkpoint_tokenizer

    if not any((directory / name).is_file() for name in (HF_FILE, SP_FILE)):
        return
    try:
        load_checkpoint_tokenizer(directory)
    except Exception as err:  # tokenizers' parse errors are bare Exceptions, ours ConfigError
        raise CheckpointError(f"import-hf: the tokenizer in {directory} does not load ({str(err)[:100]})") from None


def import_hf(source: str | Path, out: str | Path, positional: str | None = None) -> Path:
    """Write the tapa run (config.json, model.safetensors, manifest, tokenizer) to ``out``;
    ``source`` is a transformers folder or a ``.gguf`` file."""
    import shutil

    source, out = Path(source), Path(out)
    check_empty_out(out)
    tokenizer = None
    if is_gguf(source):
        hf_config, tensors, tokenizer = _gguf_state(source)
        model, _ = build_model(hf_config, tensors, positional)
    else:
        model, _ = load_hf_model(source, positional)
        check_tokenizer_files(source)

    eos, template = generation_settings(source, hf_config if tokenizer is not None else None, tokenizer)

    def write(staging: Path) -> None:
        save_pretrained(model, staging)
        save_generation(staging, eos, template)
        if tokenizer is not None:  # the GGUF's tokenizer, as the tokenizer.json transformers writes
            tokenizer.backend_tokenizer.save(str(staging / HF_FILE))
            return
        for name in (HF_FILE, SP_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, staging / name)

    return publish(out, write)
