"""Turning a trained RoPE model into a TAPA model, keeping its weights.

``naive``: the same weights under TAPA (what ``tapa convert --positional tapa`` does). Each head's
first D_A coordinates become the amplitude and the rest the phase; in the half-split (Llama)
layout, RoPE's pair i is coordinates (i, i + D/2), so every rotation pair is cut in two, one
half in the amplitude and one in the phase, and the phase starts at whatever q_P.k_P was.

``lowfreq`` (designed for the conversion): RoPE's score is a sum over pairs,
(1/sqrt(D)) sum_i [A_i cos((m-n) w_i) + B_i sin((m-n) w_i)]. A pair whose frequency w_i is
low barely rotates over the distances that matter, so its term is close to A_i, a plain dot
product: the amplitude of a TAPA head can compute exactly it. The conversion permutes each
head's query and key rows (the same permutation for both, so no dot product of an unrotated
pair changes) so that

- the amplitude coordinates are the D_A / 2 lowest-frequency pairs, both members, and the
  query's amplitude rows are scaled by sqrt(D_A / D): TAPA's amplitude q_A.k_A / sqrt(D_A)
  then equals RoPE's low-frequency terms sum A_i / sqrt(D) exactly at distance 0, and within
  a factor cos((m-n) w_i) (plus the B_i sin terms) at distance m - n;
- the phase coordinates are the high-frequency pairs, with the query's phase rows scaled by
  ``phase_init`` (small), so the phase starts near 0 and the cosine near 1: the model starts
  as RoPE's low-frequency half with no position signal, instead of a random phase, and
  continued training can grow the phase.

What is lost at conversion is what the high-frequency pairs did (local, position-sensitive
patterns such as previous-token heads); that is what the continued pretraining must relearn.
"""

from __future__ import annotations

import math

import torch

from tapa.attention.validation import amplitude_dim
from tapa.errors import ConfigError
from tapa.model.config import ModelConfig
from tapa.model.scaling import with_config
from tapa.model.transformer import TapaLM
from tapa.positional import rope_inv_freq

CONVERSIONS = ("naive", "lowfreq")


def rope_pairs(config: ModelConfig) -> list[tuple[int, int]]:
    """The coordinates (a, b) of each rotation pair of a head, in RoPE's pair order."""
    d = config.head_size
    if config.rope_interleaved:
        return [(2 * i, 2 * i + 1) for i in range(d // 2)]
    return [(i, i + d // 2) for i in range(d // 2)]


def lowfreq_order(config: ModelConfig, theta: float) -> tuple[list[int], int]:
    """The new order of a head's coordinates (amplitude first) and D_A: the D_A / 2
    lowest-frequency pairs, then the others, each pair's two members side by side."""
    d = config.head_size
    d_a = amplitude_dim(d, theta)
    if d_a % 2:
        raise ConfigError(f"tapa_theta: the lowfreq conversion moves whole pairs; theta * {d} = {d_a} must be even")
    scaling = dict(config.rope_scaling or {})
    inv_freq, _ = rope_inv_freq(scaling.pop("rope_type", "default"), d, config.rope_base, **scaling)
    pairs = rope_pairs(config)
    by_frequency = sorted(range(len(pairs)), key=lambda i: float(inv_freq[i]))  # lowest first
    amp, phase = sorted(by_frequency[: d_a // 2]), sorted(by_frequency[d_a // 2 :])
    order = [c for i in amp for c in pairs[i]] + [c for i in phase for c in pairs[i]]
    return order, d_a


def _rows(weight: torch.Tensor, heads: int, head_dim: int, order: list[int]) -> torch.Tensor:
    """``weight``'s output rows (heads x head_dim, ...) with each head's rows in ``order``."""
    shaped = weight.reshape(heads, head_dim, *weight.shape[1:])
    return shaped[:, order].reshape(weight.shape)


def switch_positional(config: ModelConfig, positional: str) -> ModelConfig:
    """The same model under another positional scheme (RoPE -> TAPA keeps every weight:
    TAPA has no parameters of its own); RoPE-only settings are dropped when leaving RoPE."""
    changes: dict[str, object] = {"positional": positional}
    if positional != "rope":
        changes.update(rope_scaling=None, partial_rotary_factor=1.0)
    return config.replace(**changes)


def convert_to_tapa(
    model: TapaLM,
    conversion: str = "lowfreq",
    *,
    theta: float = 0.5,
    alpha: float = 0.1,
    phase_scale: float = 2 * math.pi,
    phase_init: float = 0.01,
) -> TapaLM:
    """A TAPA model from a RoPE ``model`` (see the module docstring for the two conversions)."""
    if model.config.positional != "rope":
        raise ConfigError(f"convert: the model is {model.config.positional!r}, not RoPE; nothing to convert")
    if conversion not in CONVERSIONS:
        raise ConfigError(f"conversion: unknown {conversion!r}; choose one of {', '.join(CONVERSIONS)}")
    if model.config.partial_rotary_factor != 1:
        raise ConfigError("convert: partial RoPE models are not supported (their unrotated part has no frequency)")
    config = switch_positional(model.config, "tapa").replace(
        tapa_theta=theta, tapa_alpha=alpha, tapa_phase_scale=phase_scale
    )
    if conversion == "naive":
        return with_config(model, config)
    order, d_a = lowfreq_order(model.config, theta)
    c, d = model.config, model.config.head_size
    head_scale = torch.ones(d)
    head_scale[:d_a] = math.sqrt(d_a / d)
    head_scale[d_a:] = phase_init
    state = model.state_dict()
    for layer in range(c.n_layers):
        for proj, heads, scale in (("wq", c.n_heads, head_scale), ("wk", c.kv_heads, None)):
            for kind in ("weight", "bias"):
                name = f"blocks.{layer}.attn.{proj}.{kind}"
                if name not in state:
                    continue
                t = _rows(state[name], heads, d, order)
                if scale is not None:
                    view = t.reshape(heads, d, *t.shape[1:])
                    t = (view * scale.to(t.dtype).view(1, d, *([1] * (t.dim() - 1)))).reshape(t.shape)
                state[name] = t
    converted = TapaLM(config)
    converted.load_state_dict(state)
    return converted
