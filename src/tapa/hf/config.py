"""Model configs: a transformers ``config.json`` (Llama, Mistral, Qwen2, SmolLM) <-> ``ModelConfig``.

RoPE parameters are read the way transformers reads them: the current ``rope_parameters``
dict (``rope_theta`` inside it) or the legacy ``rope_scaling`` dict with a top-level
``rope_theta``; the legacy ``type`` key means ``rope_type``; ``max_position_embeddings``
/ ``original_max_position_embeddings`` come from the top level when a variant needs them
and its dict lacks them; ``partial_rotary_factor`` may sit in either place. Keys a variant
does not use are dropped with a warning (transformers warns too); missing required keys
are errors (raised by ``ModelConfig``'s validation).
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

from tapa.attention.phase import TWO_PI
from tapa.errors import ConfigError
from tapa.model import ModelConfig
from tapa.positional.rope_frequencies import ROPE_FUNCTIONS

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "TapaForCausalLM": "tapa",
}
REMOTE_FILES = ("configuration_tapa.py", "modeling_tapa.py")
AUTO_MAP = {"AutoConfig": "configuration_tapa.TapaConfig", "AutoModelForCausalLM": "modeling_tapa.TapaForCausalLM"}
_TOP_LEVEL_LENGTHS = ("max_position_embeddings", "original_max_position_embeddings")


def rope_from_hf(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None, float]:
    """(base, tapa ``rope_scaling`` or None, partial_rotary_factor) from a transformers config dict."""
    raw = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f'rope_scaling: expected a JSON object like {{"rope_type": "yarn", "factor": 8}}, got {raw!r}'
        )
    params = dict(raw)
    legacy_type = params.pop("type", None)
    rope_type = params.pop("rope_type", None) or legacy_type or "default"
    if not isinstance(rope_type, str):
        raise ConfigError(f"rope_scaling: rope_type must be a name like 'yarn', got {rope_type!r}")
    # explicit None checks: a 0 given is an error to report, not a missing value to default
    base = params.pop("rope_theta", None)
    base = config.get("rope_theta", 10000.0) if base is None else base
    partial = params.pop("partial_rotary_factor", None)
    partial = config.get("partial_rotary_factor", 1.0) if partial is None else partial
    _finite("rope_theta", base)
    _finite("partial_rotary_factor", partial)
    fn = ROPE_FUNCTIONS.get(rope_type)
    if fn is None:
        raise ConfigError(
            f"rope_scaling: rope_type {rope_type!r} is not one tapa implements ({', '.join(sorted(ROPE_FUNCTIONS))})"
        )
    accepted = [p for p in inspect.signature(fn).parameters if p not in ("head_dim", "base", "seq_len")]
    for name in _TOP_LEVEL_LENGTHS:
        if name in accepted and name not in params and name in config:
            params[name] = config[name]
    if rope_type == "yarn" and "original_max_position_embeddings" not in params and "max_position_embeddings" in config:
        params["original_max_position_embeddings"] = config["max_position_embeddings"]
    extra = sorted(set(params) - set(accepted))
    if extra:
        warnings.warn(f"rope_scaling: ignoring keys {', '.join(extra)} that {rope_type} does not use", stacklevel=2)
        params = {k: v for k, v in params.items() if k in accepted}
    for name, value in params.items():
        for item in value if isinstance(value, list) else [value]:  # longrope's factor lists
            _finite(name, item)
    scaling = {"rope_type": rope_type, **params} if rope_type != "default" or params else None
    return float(base), scaling, float(partial)


def _finite(name: str, value: object) -> None:
    """A RoPE setting must be a finite number (JSON's 1e400 parses as inf; strings and booleans are typos)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"rope_scaling: {name} must be a finite number, got {value!r}")


def model_config_from_hf(config: dict[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` for a Llama-architecture transformers config (RoPE positions)."""
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES.values() and not set(architectures) & set(ARCHITECTURES):
        raise ConfigError(
            f"import-hf: model_type {model_type!r} / architectures {architectures} is not a "
            f"Llama-architecture model tapa can load ({', '.join(ARCHITECTURES)})"
        )
    if config.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"import-hf: hidden_act {config['hidden_act']!r}; tapa's SwiGLU uses silu")
    if config.get("mlp_bias"):
        raise ConfigError("import-hf: mlp_bias = true is not supported (tapa's SwiGLU has no biases)")
    check_hf_types(config)
    if model_type == "tapa":
        return _tapa_model_config(config)
    sliding = config.get("sliding_window") if config.get("use_sliding_window", model_type == "mistral") else None
    if sliding is not None and sliding < config.get("max_position_embeddings", 0):
        warnings.warn(f"import-hf: sliding_window {sliding} is ignored; tapa attends to the full context", stacklevel=2)
    base, scaling, partial = rope_from_hf(config)
    try:
        return ModelConfig(
            vocab_size=config["vocab_size"],
            n_layers=config["num_hidden_layers"],
            **_shape_fields(config),
            attention_bias=bool(config.get("attention_bias", False)),
            qkv_bias=model_type == "qwen2",
            max_seq_len=config.get("max_position_embeddings", 2048),
            positional="rope",
            rope_base=base,
            rope_scaling=scaling,
            partial_rotary_factor=partial,
            norm_eps=config.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as missing:
        raise ConfigError(f"import-hf: config.json lacks {missing}") from None


_REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
_OPTIONAL_INTS = ("num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window")
_TAPA_FIELDS = ("positional", "tapa_alpha", "tapa_theta", "tapa_phase")


def check_hf_types(config: dict[str, Any]) -> None:
    """The shape fields of a transformers config are positive integers (and the flags booleans),
    before any arithmetic on them: a typo is one clean error, not a ZeroDivisionError."""
    for name in _REQUIRED_INTS + _OPTIONAL_INTS:
        if name not in config or (name in _OPTIONAL_INTS and config[name] is None):
            if name in _REQUIRED_INTS:
                raise ConfigError(f"import-hf: config.json lacks {name!r}")
            continue
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"import-hf: config.json {name} must be a positive integer, got {value!r}")
    eps = config.get("rms_norm_eps", 1e-6)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not (math.isfinite(eps) and eps > 0):
        raise ConfigError(f"import-hf: config.json rms_norm_eps must be a number > 0, got {eps!r}")
    for name in ("tie_word_embeddings", "attention_bias", "use_sliding_window"):
        if name in config and config[name] is not None and not isinstance(config[name], bool):
            raise ConfigError(f"import-hf: config.json {name} must be true or false, got {config[name]!r}")
    if config.get("model_type") == "tapa":
        missing = [name for name in _TAPA_FIELDS if name not in config]
        if missing:
            raise ConfigError(f"import-hf: this TAPA config.json lacks {', '.join(missing)}; re-export it")


def _shape(config: ModelConfig) -> dict[str, Any]:
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
    }


def _shape_fields(config: dict[str, Any]) -> dict[str, Any]:
    """d_model, heads, head_dim and SwiGLU width from a transformers config, with values tapa
    derives by itself written as None (so an exported tapa model round-trips to the same config)."""
    d_model, n_heads = config["hidden_size"], config["num_attention_heads"]
    kv, head_dim, ffn = config.get("num_key_value_heads"), config.get("head_dim"), config["intermediate_size"]
    derived_head = d_model // n_heads if d_model % n_heads == 0 else None
    return {
        "d_model": d_model,
        "n_heads": n_heads,
        "n_kv_heads": None if kv in (None, n_heads) else kv,
        "head_dim": None if head_dim in (None, derived_head) else head_dim,
        "ffn_hidden": None if ffn == ModelConfig(d_model=d_model, n_heads=1).ffn_dim else ffn,
    }


def _tapa_model_config(config: dict[str, Any]) -> ModelConfig:
    """The inverse of the TapaConfig export."""
    return ModelConfig(
        vocab_size=config["vocab_size"],
        n_layers=config["num_hidden_layers"],
        **_shape_fields(config),
        max_seq_len=config["max_position_embeddings"],
        positional=config["positional"],
        tapa_alpha=config["tapa_alpha"],
        tapa_theta=config["tapa_theta"],
        tapa_phase=config["tapa_phase"],
        tapa_phase_scale=config.get("tapa_phase_scale", TWO_PI),
        attention_bias=config.get("attention_bias", False),
        qkv_bias=config.get("qkv_bias", False),
        norm_eps=config["rms_norm_eps"],
        tie_embeddings=config["tie_word_embeddings"],
        init_std=config.get("initializer_range", 0.02),
    )


def hf_config_from_model(config: ModelConfig, special_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """A transformers ``config.json`` (current format): Llama / Qwen2 for RoPE models, our
    remote-code TapaConfig (with ``auto_map``) for TAPA, NoPE and ALiBi models."""
    if config.positional != "rope":
        return {
            "architectures": ["TapaForCausalLM"],
            "model_type": "tapa",
            "auto_map": AUTO_MAP,
            **_shape(config),
            "positional": config.positional,
            "tapa_alpha": config.tapa_alpha,
            "tapa_theta": config.tapa_theta,
            "tapa_phase": config.tapa_phase,
            "tapa_phase_scale": config.tapa_phase_scale,
            "attention_bias": config.attention_bias,
            "qkv_bias": config.qkv_bias,
            "dtype": "float32",
            **(special_ids or {}),
        }
    if config.rope_interleaved:
        raise ConfigError(
            "export-hf: interleaved RoPE (rope_interleaved = true) is not the Llama layout; "
            "retrain with rope_interleaved = false"
        )
    qwen = config.qkv_bias and not config.attention_bias
    rope = dict(config.rope_scaling or {"rope_type": "default"})
    rope["rope_theta"] = config.rope_base
    if config.partial_rotary_factor != 1:
        rope["partial_rotary_factor"] = config.partial_rotary_factor
    out: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        **_shape(config),  # sizes, rms_norm_eps, tie_word_embeddings, initializer_range
        "hidden_act": "silu",
        "rope_parameters": rope,
        "dtype": "float32",
    }
    if qwen:
        out.update({"use_sliding_window": False, "sliding_window": None})
    else:
        out.update({"attention_bias": config.attention_bias, "mlp_bias": False})
    if config.partial_rotary_factor != 1:
        out["partial_rotary_factor"] = config.partial_rotary_factor
    out.update(special_ids or {})
    return out


def rope_scaling_changes(text: str, base: ModelConfig, original_len: int, context: str) -> dict:
    """ModelConfig changes for a ``--rope-scaling JSON`` dict, read as transformers reads a
    ``rope_scaling`` entry: ``rope_type`` or the legacy ``type``, ``rope_theta`` and
    ``partial_rotary_factor`` optionally inside it, and the lengths a variant needs
    (``original_max_position_embeddings`` for YaRN / LongRoPE / llama3,
    ``max_position_embeddings`` for dynamic NTK) defaulting to ``original_len``."""
    import json
    import sys

    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"{context}: --rope-scaling is not valid JSON ({err.msg}); "
            """pass e.g. '{"rope_type": "yarn", "factor": 8}'"""
        ) from None
    if not isinstance(params, dict):
        raise ConfigError(f"{context}: --rope-scaling must be a JSON object, got {type(params).__name__}")
    if base.positional != "rope":
        raise ConfigError(
            f"{context}: --rope-scaling rescales RoPE, but this model uses {base.positional!r}, "
            "which continues unchanged at any length; drop the option"
        )
    hf = {
        "rope_scaling": params,
        "rope_theta": base.rope_base,
        "partial_rotary_factor": base.partial_rotary_factor,
        "max_position_embeddings": original_len,
        "original_max_position_embeddings": original_len,
    }
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rope_base, scaling, partial = rope_from_hf(hf)
    for warning in caught:  # unknown keys: a warning, as transformers gives, not a refusal
        print(f"warning: {warning.message}", file=sys.stderr)
    return {"rope_scaling": scaling, "rope_base": rope_base, "partial_rotary_factor": partial}
