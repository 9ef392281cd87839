"""Tensor names: tapa's ``TapaLM`` state dict <-> transformers' Llama family (Llama,
Mistral, Qwen2, SmolLM share these names)."""

from __future__ import annotations

import re

BLOCK = {
    "attn.wq": "self_attn.q_proj",
    "attn.wk": "self_attn.k_proj",
    "attn.wv": "self_attn.v_proj",
    "attn.wo": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn.gate": "mlp.gate_proj",
    "ffn.up": "mlp.up_proj",
    "ffn.down": "mlp.down_proj",
}
TOP = {
    "embed.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_OURS = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
_THEIRS = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


_PHASE_OURS = re.compile(r"blocks\.(\d+)\.attn\.phase\.(m|n)$")
_PHASE_THEIRS = re.compile(r"model\.layers\.(\d+)\.self_attn\.phase_(m|n)$")


def to_hf_name(name: str) -> str:
    """``blocks.3.attn.wq.weight`` -> ``model.layers.3.self_attn.q_proj.weight`` (and TAPA's
    learnable M / N, ``blocks.3.attn.phase.m`` -> ``model.layers.3.self_attn.phase_m``)."""
    if name in TOP:
        return TOP[name]
    phase = _PHASE_OURS.match(name)
    if phase:
        return f"model.layers.{phase.group(1)}.self_attn.phase_{phase.group(2)}"
    match = _OURS.match(name)
    if not match or match.group(2) not in BLOCK:
        raise KeyError(f"no transformers name for tensor {name!r}")
    layer, module, kind = match.groups()
    return f"model.layers.{layer}.{BLOCK[module]}.{kind}"


def from_hf_name(name: str) -> str | None:
    """The inverse of :func:`to_hf_name`; None for tensors tapa does not keep (rotary buffers)."""
    for ours, theirs in TOP.items():
        if name == theirs:
            return ours
    phase = _PHASE_THEIRS.match(name)
    if phase:
        return f"blocks.{phase.group(1)}.attn.phase.{phase.group(2)}"
    match = _THEIRS.match(name)
    if not match:
        return None
    layer, module, kind = match.groups()
    inverse = {v: k for k, v in BLOCK.items()}
    if module not in inverse:
        return None
    return f"blocks.{layer}.{inverse[module]}.{kind}"
