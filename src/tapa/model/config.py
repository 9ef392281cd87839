"""Model configuration: a dataclass that validates itself and round-trips through JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tapa.attention.phase import PHASES, TWO_PI, check_phase_scale
from tapa.attention.validation import IMPLS, amplitude_dim
from tapa.errors import ConfigError
from tapa.positional import POSITIONAL_SCHEMES, rope_inv_freq

OMITTED_AT_DEFAULT = {"head_dim": None, "attention_bias": False, "qkv_bias": False, "tapa_phase_scale": TWO_PI}


@dataclass
class ModelConfig:
    """A Llama-style decoder whose positional scheme is a field.

    ``positional``: ``"tapa"`` (Eq. 12, no RoPE anywhere), ``"rope"`` (any ``rope_scaling``
    of :mod:`tapa.positional`), ``"alibi"`` or ``"nope"``.
    """

    vocab_size: int = 259
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    # per-head width; None = d_model // n_heads. Set it to decouple the two (Gemma, Qwen3 and
    # our head-size ablations: the attention's inner width is then n_heads x head_dim)
    head_dim: int | None = None
    ffn_hidden: int | None = None
    # biases on the attention projections: q, k, v and o (Llama's attention_bias), or q, k, v only (Qwen2)
    attention_bias: bool = False
    qkv_bias: bool = False
    max_seq_len: int = 256
    positional: str = "tapa"
    tapa_alpha: float = 0.1
    tapa_theta: float = 0.5
    tapa_phase: str = "quadratic"
    # s in cos(s |m-n|^alpha q_P.k_P / sqrt(D_P)): 2 pi in the paper's Eq. 12, 1 in the public
    # forward-only code (AIMRelease/tapa-attention), 0 switches the phase off (cos = 1)
    tapa_phase_scale: float = TWO_PI
    rope_base: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rope_interleaved: bool = False
    # fraction of each head's dimensions RoPE rotates (the first ones); the rest carry no
    # position (Hugging Face's partial_rotary_factor, as in GPT-NeoX / Phi / StableLM)
    partial_rotary_factor: float = 1.0
    attn_impl: str = "auto"
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_size(self) -> int:
        """Width of one attention head: ``head_dim`` if set, else d_model // n_heads."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Dimensions RoPE rotates per head: int(head_dim * partial_rotary_factor), as transformers computes it."""
        return int(self.head_size * self.partial_rotary_factor)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    def validate(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            _positive_int(name, getattr(self, name))
        for name in ("n_kv_heads", "head_dim", "ffn_hidden"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads: {self.n_heads} does not divide d_model={self.d_model}; change one, or set head_dim"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"n_kv_heads: {self.kv_heads} does not divide n_heads={self.n_heads}")
        if self.positional not in POSITIONAL_SCHEMES:
            raise ConfigError(
                f"positional: unknown scheme {self.positional!r}; choose one of {', '.join(POSITIONAL_SCHEMES)}"
            )
        if self.attn_impl not in IMPLS:
            raise ConfigError(f"attn_impl: unknown {self.attn_impl!r}; choose one of {', '.join(IMPLS)}")
        for name in ("attention_bias", "qkv_bias", "tie_embeddings", "rope_interleaved"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        for name in ("norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name}: must be a number > 0, got {value!r}")
        if self.positional == "tapa":
            if not isinstance(self.tapa_alpha, (int, float)) or not (
                math.isfinite(self.tapa_alpha) and self.tapa_alpha > 0
            ):
                raise ConfigError(f"tapa_alpha: must be a finite number > 0, got {self.tapa_alpha!r}")
            try:
                amplitude_dim(self.head_size, self.tapa_theta)
            except ConfigError as err:
                raise ConfigError(f"tapa_theta: {err}".replace("tapa_theta: theta: ", "tapa_theta: ")) from None
            try:
                self.tapa_phase_scale = check_phase_scale(self.tapa_phase_scale)
            except ConfigError as err:
                raise ConfigError(f"tapa_{err}") from None
            if self.tapa_phase not in PHASES:
                raise ConfigError(f"tapa_phase: unknown {self.tapa_phase!r}; choose one of {', '.join(PHASES)}")
        if self.positional != "tapa" and self.tapa_phase_scale != TWO_PI:
            raise ConfigError(
                f"tapa_phase_scale: only applies to positional='tapa', but positional={self.positional!r}; remove it"
            )
        if self.rope_scaling is not None and self.positional != "rope":
            raise ConfigError(
                f"rope_scaling: only applies to positional='rope', but positional={self.positional!r}; remove it"
            )
        factor = self.partial_rotary_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise ConfigError(f"partial_rotary_factor: must be a number in (0, 1], got {factor!r}")
        if factor != 1 and self.positional != "rope":
            raise ConfigError(
                f"partial_rotary_factor: only applies to positional='rope', but positional={self.positional!r}"
            )
        if self.positional == "rope":
            if self.head_size % 2:
                raise ConfigError(f"head_dim: RoPE needs an even head width, got {self.head_size}")
            if self.rotary_dim < 2 or self.rotary_dim % 2:
                raise ConfigError(
                    f"partial_rotary_factor: rotates int({self.head_size} x {factor}) = {self.rotary_dim} dimensions; "
                    "choose a factor that gives an even number >= 2"
                )
            if not isinstance(self.rope_scaling or {}, dict):
                raise ConfigError(
                    f"rope_scaling: expected a dict like {{'rope_type': 'yarn', ...}}, got {self.rope_scaling!r}"
                )
            scaling = dict(self.rope_scaling or {})
            rope_type = scaling.pop("rope_type", "default")
            try:
                rope_inv_freq(rope_type, self.rotary_dim, self.rope_base, **scaling)
            except ConfigError as err:
                message = str(err)
                if message.startswith("rope_theta: "):
                    message = "rope_base: " + message.removeprefix("rope_theta: ")
                elif not message.startswith("rope_scaling"):
                    message = f"rope_scaling: {message}"
                raise ConfigError(message) from None

    # ---- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        # fields added after the first release are not written at their defaults: older
        # configs (and the stage hashes derived from them) stay byte-identical
        for name, default in OMITTED_AT_DEFAULT.items():
            if data[name] == default:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"model config: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"model config: not valid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"model config: no such file {path}")
        return cls.from_json(path.read_text())

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
