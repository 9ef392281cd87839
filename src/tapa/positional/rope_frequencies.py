"""RoPE inverse frequencies, one function per ``rope_type``, registered by name.

Names and parameters follow Hugging Face transformers' ``modeling_rope_utils`` so that
configs and numbers carry over: ``default``, ``linear`` (position interpolation),
``dynamic`` (dynamic NTK), ``yarn``, ``llama3``, ``longrope``; plus ``ntk`` (static
NTK-aware base scaling) and ``abf`` (a plain change of base, Xiong et al. 2023).

Every function returns ``(inv_freq, attention_factor)``: ``inv_freq`` has head_dim/2
float32 entries (angle of pair d at position m is ``m * inv_freq[d]``) and
``attention_factor`` multiplies cos and sin (so the logits scale by its square).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

from tapa.errors import ConfigError

RopeFn = Callable[..., tuple[torch.Tensor, float]]
ROPE_FUNCTIONS: dict[str, RopeFn] = {}


def register(name: str) -> Callable[[RopeFn], RopeFn]:
    def wrap(fn: RopeFn) -> RopeFn:
        ROPE_FUNCTIONS[name] = fn
        return fn

    return wrap


def _exponents(head_dim: int) -> torch.Tensor:
    """2d / D for d = 0 .. D/2 - 1, in float32."""
    return torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim


def _plain(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** _exponents(head_dim))


@register("default")
def default_rope(head_dim: int, base: float, *, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """theta_d = base^(-2d/D)."""
    return _plain(head_dim, base), 1.0


@register("linear")
def linear_rope(head_dim: int, base: float, *, factor: float, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Position interpolation (Chen et al. 2023): positions divided by ``factor``."""
    _positive("factor", factor)
    return _plain(head_dim, base) / factor, 1.0


@register("ntk")
def ntk_rope(head_dim: int, base: float, *, factor: float, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Static NTK-aware scaling: base multiplied by factor^(D / (D - 2))."""
    _positive("factor", factor)
    return _plain(head_dim, base * factor ** (head_dim / (head_dim - 2))), 1.0


@register("abf")
def abf_rope(
    head_dim: int, base: float, *, rope_theta: float, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """Adjusted base frequency (Xiong et al. 2023): the same formula with the new base ``rope_theta``."""
    _positive("rope_theta", rope_theta)
    return _plain(head_dim, rope_theta), 1.0


@register("dynamic")
def dynamic_rope(
    head_dim: int,
    base: float,
    *,
    factor: float,
    max_position_embeddings: int,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Dynamic NTK: for L > max_position_embeddings the base grows to
    base * (factor * L / L_max - (factor - 1))^(D / (D - 2)); unchanged up to L_max."""
    _positive("factor", factor)
    _positive("max_position_embeddings", max_position_embeddings)
    length = max(seq_len or max_position_embeddings, max_position_embeddings)
    scaled = base * ((factor * length / max_position_embeddings) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return _plain(head_dim, scaled), 1.0


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_dim(rotations: float, head_dim: int, base: float, original_len: int) -> float:
    """The (fractional) dimension index whose wavelength fits ``rotations`` turns in original_len."""
    return head_dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))


@register("yarn")
def yarn_rope(
    head_dim: int,
    base: float,
    *,
    factor: float,
    original_max_position_embeddings: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
    truncate: bool = True,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): dimensions that turn more than ``beta_fast`` times over the
    original length keep their frequency, those that turn fewer than ``beta_slow`` times are
    interpolated by ``factor``, with a linear ramp between; attention factor 0.1 ln(s) + 1."""
    _positive("factor", factor)
    _positive("original_max_position_embeddings", original_max_position_embeddings)
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(factor)
    low = _yarn_dim(beta_fast, head_dim, base, original_max_position_embeddings)
    high = _yarn_dim(beta_slow, head_dim, base, original_max_position_embeddings)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    wavelength_base = base ** _exponents(head_dim)
    extrapolated = 1.0 / wavelength_base
    interpolated = 1.0 / (factor * wavelength_base)
    keep = 1 - ramp  # 1 for high-frequency dims (kept), 0 for low-frequency dims (interpolated)
    return interpolated * (1 - keep) + extrapolated * keep, float(attention_factor)


@register("llama3")
def llama3_rope(
    head_dim: int,
    base: float,
    *,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Llama 3.1: wavelengths above L/low_freq_factor are divided by factor, below
    L/high_freq_factor kept, and smoothly interpolated in between."""
    _positive("factor", factor)
    if not high_freq_factor > low_freq_factor:
        raise ConfigError(f"high_freq_factor: must exceed low_freq_factor ({high_freq_factor} <= {low_freq_factor})")
    inv_freq = _plain(head_dim, base)
    old_len = original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    long_wave = wavelen > old_len / low_freq_factor
    short_wave = wavelen < old_len / high_freq_factor
    smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(long_wave, inv_freq / factor, blended)
    out = torch.where(short_wave, inv_freq, out)
    return out, 1.0


@register("longrope")
def longrope_rope(
    head_dim: int,
    base: float,
    *,
    short_factor: list[float],
    long_factor: list[float],
    original_max_position_embeddings: int,
    factor: float | None = None,
    max_position_embeddings: int | None = None,
    attention_factor: float | None = None,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """LongRoPE (Ding et al. 2024): per-dimension rescaling, ``long_factor`` once the length
    exceeds the original one, ``short_factor`` before; attention factor sqrt(1 + ln s / ln L)."""
    for name, values in (("short_factor", short_factor), ("long_factor", long_factor)):
        if len(values) != head_dim // 2:
            raise ConfigError(f"{name}: needs head_dim/2 = {head_dim // 2} values, got {len(values)}")
    if factor is None:
        if max_position_embeddings is None:
            raise ConfigError("longrope: give `factor` or `max_position_embeddings` (factor = max / original)")
        factor = max_position_embeddings / original_max_position_embeddings
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))
        )
    use_long = seq_len is not None and seq_len > original_max_position_embeddings
    ext = torch.tensor(long_factor if use_long else short_factor, dtype=torch.float32)
    return 1.0 / (ext * base ** _exponents(head_dim)), float(attention_factor)


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name}: must be a number > 0, got {value!r}")


def rope_inv_freq(
    rope_type: str, head_dim: int, base: float, *, seq_len: int | None = None, **params: object
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention factor of a RoPE variant, by its registered name."""
    fn = ROPE_FUNCTIONS.get(rope_type)
    if fn is None:
        raise ConfigError(f"rope_type: unknown {rope_type!r}; choose one of {', '.join(sorted(ROPE_FUNCTIONS))}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ConfigError(f"head_dim: RoPE needs an even head_dim >= 2, got {head_dim!r}")
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
        raise ConfigError(f"rope_theta: the RoPE base must be a number > 1, got {base!r}")
    signature = inspect.signature(fn)
    accepted = [p for p in signature.parameters if p not in ("head_dim", "base", "seq_len")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"rope_scaling: {rope_type!r} does not take {', '.join(unknown)}; "
            f"it takes {', '.join(accepted) or 'nothing'}"
        )
    missing = [
        p
        for p, spec in signature.parameters.items()
        if spec.kind is inspect.Parameter.KEYWORD_ONLY and spec.default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise ConfigError(f"rope_scaling: {rope_type!r} needs {', '.join(missing)}")
    return fn(head_dim, float(base), seq_len=seq_len, **params)
