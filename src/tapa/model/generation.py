"""A model's generation settings, saved beside its weights in transformers' file names:
``generation_config.json`` (the end-of-sequence ids generation stops at) and
``chat_template.jinja`` (the prompt format of a chat model).

An imported model keeps its own: SmolLM2-Instruct stops at ``<|im_end|>`` (its config's
``eos_token_id``), not at the tokenizer's ``<|endoftext|>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tapa.errors import ConfigError

GENERATION_FILE = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def eos_list(value: Any) -> list[int]:
    """transformers' ``eos_token_id`` (an int, a list of ints or None) as a list."""
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"eos_token_id: expected token ids, got {value!r}")
    return values


def save_generation(directory: str | Path, eos_ids: list[int], chat_template: str | None = None) -> None:
    directory = Path(directory)
    if eos_ids:
        (directory / GENERATION_FILE).write_text(json.dumps({"eos_token_id": eos_ids}, indent=1) + "\n")
    if chat_template:
        (directory / CHAT_TEMPLATE_FILE).write_text(chat_template)


def load_generation(directory: str | Path) -> tuple[list[int], str | None]:
    """(eos ids, chat template or None) saved with a model; ([], None) when there are none."""
    directory = Path(directory)
    eos: list[int] = []
    path = directory / GENERATION_FILE
    if path.is_file():
        from tapa.utils.jsonfile import read_json_object

        eos = eos_list(read_json_object(path, "generation").get("eos_token_id"))
    template = directory / CHAT_TEMPLATE_FILE
    return eos, template.read_text() if template.is_file() else None


def render_chat(template: str, prompt: str, special: dict[str, str]) -> str:
    """One user message in the model's chat format, ready for the assistant's answer
    (jinja2, as transformers' apply_chat_template renders it)."""
    import jinja2

    try:
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(template).render(
            messages=[{"role": "user", "content": prompt}], add_generation_prompt=True, **special
        )
    except jinja2.TemplateError as err:
        raise ConfigError(f"--chat: the model's chat template does not render ({err})") from None
