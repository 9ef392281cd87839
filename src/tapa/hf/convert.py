"""Switch a saved model's positional scheme, keeping every weight: the work behind
``tapa convert``, callable from Python::

    from tapa.hf.convert import convert_checkpoint
    convert_checkpoint("runs/rope", "runs/rope-as-tapa", "tapa")

RoPE -> TAPA keeps every weight (TAPA has no parameters of its own; the head dimensions
split into amplitude and phase halves), so the converted model starts far from a trained
TAPA model and needs continued training (``tapa finetune``). For a conversion that
rearranges the heads first, see :mod:`tapa.model.conversion`.
"""

from __future__ import annotations

from pathlib import Path

from tapa.data.tokenizer import copy_tokenizer_files
from tapa.errors import ConfigError
from tapa.model import TapaLM, load_config, load_pretrained, save_pretrained
from tapa.model.conversion import switch_positional
from tapa.model.scaling import with_config
from tapa.utils.publish import check_empty_out, publish


def switched(checkpoint: str | Path, positional: str) -> TapaLM:
    """The model saved in ``checkpoint`` under the ``positional`` scheme (same weights)."""
    if load_config(checkpoint).positional == positional:
        raise ConfigError(f"convert: {checkpoint} already uses {positional!r}; nothing to convert")
    model = load_pretrained(checkpoint)
    return with_config(model, switch_positional(model.config, positional))


def save_with_tokenizer(model: TapaLM, tokenizer_from: str | Path, directory: str | Path) -> None:
    """``model`` saved into ``directory`` with the tokenizer files of the folder it came from."""
    save_pretrained(model, directory)
    copy_tokenizer_files(Path(tokenizer_from), Path(directory))


def convert_checkpoint(checkpoint: str | Path, out: str | Path, positional: str) -> Path:
    """Write ``checkpoint`` switched to ``positional`` into ``out`` (a new or empty folder,
    written all-or-nothing); returns ``out``."""
    out = Path(out)
    check_empty_out(out)
    converted = switched(checkpoint, positional)
    return publish(out, lambda staging: save_with_tokenizer(converted, checkpoint, staging))
