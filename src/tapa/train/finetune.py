"""Long-context fine-tuning: continue a checkpoint at a longer length, with the RoPE
rescaling of the run (PI, YaRN, NTK, or a new base as in ABF). TAPA, NoPE and ALiBi
continue unchanged, which is TAPA's point; asking to rescale them is an error.
"""

from __future__ import annotations

from tapa.errors import ConfigError
from tapa.model import ModelConfig

SCALING_OPTIONS = ("pi", "yarn", "ntk", "rope_base")


def scaled_model_config(
    base: ModelConfig,
    seq_len: int,
    *,
    pi: float | None = None,
    yarn: float | None = None,
    ntk: float | None = None,
    rope_base: float | None = None,
) -> ModelConfig:
    """The model config to fine-tune at ``seq_len`` with at most one RoPE rescaling."""
    given = {name: value for name, value in zip(SCALING_OPTIONS, (pi, yarn, ntk, rope_base), strict=True) if value}
    flags = ", ".join("--" + name.replace("_", "-") for name in given)
    if len(given) > 1:
        raise ConfigError(f"fine-tune: {flags} are alternatives; pass one RoPE rescaling")
    if given and base.positional != "rope":
        raise ConfigError(
            f"fine-tune: {flags} rescales RoPE, but this checkpoint uses {base.positional!r}, "
            "which continues unchanged at any length; drop the option"
        )
    for name, value in given.items():
        if value <= (0 if name == "rope_base" else 1):
            raise ConfigError(f"fine-tune: --{name.replace('_', '-')} must be > {0 if name == 'rope_base' else 1}")
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
    return base.replace(**changes)
