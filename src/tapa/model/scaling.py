"""RoPE rescaling of a trained model's config, for long-context fine-tuning and for
inference-time overrides: PI, YaRN, NTK, dynamic NTK, or a new base (ABF). TAPA, NoPE and
ALiBi continue unchanged at any length, which is TAPA's point; asking to rescale them is
an error.
"""

from __future__ import annotations

from tapa.errors import ConfigError
from tapa.model.config import ModelConfig
from tapa.model.transformer import TapaLM

SCALING_OPTIONS = ("pi", "yarn", "ntk", "rope_base", "dynamic")
FLAG_NAMES = {"pi": "--pi", "yarn": "--yarn", "ntk": "--ntk", "rope_base": "--new-rope-base", "dynamic": "--dynamic"}


def scaled_model_config(
    base: ModelConfig,
    seq_len: int,
    *,
    pi: float | None = None,
    yarn: float | None = None,
    ntk: float | None = None,
    rope_base: float | None = None,
    dynamic: float | None = None,
    context: str = "fine-tune",
) -> ModelConfig:
    """The config at training length ``seq_len`` with at most one RoPE rescaling; the
    original length (for YaRN and dynamic NTK) is the base config's ``max_seq_len``."""
    values = (pi, yarn, ntk, rope_base, dynamic)
    given = {name: value for name, value in zip(SCALING_OPTIONS, values, strict=True) if value is not None}
    flags = ", ".join(FLAG_NAMES[name] for name in given)
    if len(given) > 1:
        raise ConfigError(f"{context}: {flags} are alternatives; pass one RoPE rescaling")
    if given and base.positional != "rope":
        raise ConfigError(
            f"{context}: {flags} rescales RoPE, but this checkpoint uses {base.positional!r}, "
            "which continues unchanged at any length; drop the option"
        )
    for name, value in given.items():
        if value <= (0 if name == "rope_base" else 1):
            raise ConfigError(f"{context}: {FLAG_NAMES[name]} must be > {0 if name == 'rope_base' else 1}")
    changes: dict = {"max_seq_len": seq_len}
    if pi:
        changes["rope_scaling"] = {"rope_type": "linear", "factor": pi}
    elif yarn:
        changes["rope_scaling"] = {
            "rope_type": "yarn",
            "factor": yarn,
            "original_max_position_embeddings": base.max_seq_len,
        }
    elif ntk:
        changes["rope_scaling"] = {"rope_type": "ntk", "factor": ntk}
    elif rope_base:
        changes["rope_base"] = rope_base
    elif dynamic:
        original = base.max_seq_len
        changes["rope_scaling"] = {"rope_type": "dynamic", "factor": dynamic, "max_position_embeddings": original}
    return base.replace(**changes)


def with_config(model: TapaLM, config: ModelConfig) -> TapaLM:
    """The same weights under another config (a RoPE rescaling or a new length); ``model`` if unchanged."""
    if config == model.config:
        return model
    rebuilt = TapaLM(config)
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt
