"""TapaLM: a Llama-style decoder-only language model (RMSNorm, SwiGLU, GQA)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tapa.attention.phase import TWO_PI
from tapa.errors import ConfigError, ShapeError
from tapa.model.attention import Attention
from tapa.model.cache import KVCache
from tapa.model.config import ModelConfig
from tapa.model.layers import RMSNorm, SwiGLU
from tapa.positional import RotaryEmbedding, alibi_slopes


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config, layer)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config.d_model, config.ffn_dim)

    def forward(
        self,
        x: torch.Tensor,
        start_pos: int,
        cache: KVCache | None,
        rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), start_pos, cache, rope_tables)
        return x + self.ffn(self.ffn_norm(x))


def weight_std(config: ModelConfig, module_name: str) -> float:
    """The init standard deviation of a Linear / Embedding weight: ``init_std``, divided by
    sqrt(2 n_layers) for the residual output projections (attention ``wo``, MLP ``down``).
    The one statement of the rule: :meth:`TapaLM.reset_parameters` and the sharded init use it."""
    scale = 1 / math.sqrt(2 * config.n_layers) if module_name.endswith(("wo", "down")) else 1.0
    return config.init_std * scale


class TapaLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rope = (
            RotaryEmbedding(config.rotary_dim, config.rope_base, config.rope_scaling, config.rope_interleaved)
            if config.positional == "rope"
            else None
        )
        # activation checkpointing (set by the trainer's --activation-checkpointing): training
        # memory of one block's activations plus each block's input, for one more forward
        self.activation_checkpointing = False
        if not self.embed.weight.is_meta:  # a model built on the meta device gets its weights assigned
            self.reset_parameters()

    def rebuild_buffers(self) -> None:
        """Recompute the non-persistent buffers (RoPE frequencies, ALiBi slopes) on CPU, for a
        model built on the meta device whose parameters were then assigned from a checkpoint."""
        with torch.device("cpu"):
            if self.rope is not None:
                c = self.config
                self.rope = RotaryEmbedding(c.rotary_dim, c.rope_base, c.rope_scaling, c.rope_interleaved)
            for block in self.blocks:
                attn = block.attn
                if hasattr(attn, "slopes"):
                    attn.slopes = alibi_slopes(attn.n_heads)

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases; residual output projections scaled by 1/sqrt(2 n_layers)."""
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=weight_std(self.config, name))
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Distinct trainable parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.config
        pos = c.positional
        if pos == "tapa":
            scale = "" if c.tapa_phase_scale == TWO_PI else f", phase_scale={c.tapa_phase_scale:g}"
            pos += f" (alpha={c.tapa_alpha}, theta={c.tapa_theta}, phase={c.tapa_phase}{scale})"
        elif pos == "rope":
            pos += f" (base={c.rope_base:g}, scaling={c.rope_scaling or 'none'})"
        return (
            f"TapaLM: {self.num_parameters() / 1e6:.2f}M parameters; {c.n_layers} layers, d_model {c.d_model}, "
            f"{c.n_heads} heads ({c.kv_heads} kv), head_dim {c.head_size}, vocab {c.vocab_size}; positional {pos}"
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        start_pos: int | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, vocab) in float32 (float64 for a float64 model).

        ``start_pos`` is the position of the first input token; it defaults to the cache's next
        position (0 without a cache). Scores depend on positions only through differences for
        TAPA, RoPE and ALiBi, so shifting every position leaves the logits unchanged.
        """
        if input_ids.dim() != 2:
            raise ShapeError(f"input_ids: expected shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise ShapeError("input_ids: empty sequence; give at least one token")
        if start_pos is None:
            start_pos = cache.next_position if cache is not None else 0
        elif start_pos < 0:
            raise ConfigError(f"start_pos: must be >= 0, got {start_pos}")
        if cache is not None:
            if cache.start is None:
                cache.start = start_pos
            elif start_pos != cache.next_position:
                raise ConfigError(f"start_pos: the cache continues at {cache.next_position}, got {start_pos}")
        x = self.embed(input_ids)
        rope_tables = None
        if self.rope is not None:  # one cos/sin table per forward, shared by every layer
            positions = torch.arange(start_pos, start_pos + input_ids.shape[1], device=input_ids.device)
            rope_tables = self.rope(positions)
        checkpointed = self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for block in self.blocks:
            if checkpointed:  # keep only each block's input; recompute its insides in the backward pass
                x = checkpoint(block, x, start_pos, None, rope_tables, use_reentrant=False)
            else:
                x = block(x, start_pos, cache, rope_tables)
        logits = self.lm_head(self.norm(x))
        return logits if logits.dtype == torch.float64 else logits.float()

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(input_ids)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        eos_id: int | list[int] | tuple[int, ...] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``input_ids`` (B, L) by ``max_new_tokens`` tokens with a KV cache.

        ``temperature`` 0 decodes greedily; otherwise samples from softmax(logits / T),
        restricted to the ``top_k`` most likely tokens when given. Stops early once every
        sequence has produced an ``eos_id`` (one id or several, as a generation config lists them;
        a finished sequence is padded with its first). Returns (B, L + new).
        """
        if max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ConfigError(f"temperature: must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ConfigError(f"top_k: must be a positive integer, got {top_k}")
        cache = self.new_cache()
        eos = [eos_id] if isinstance(eos_id, int) else list(eos_id or [])
        stops = torch.tensor(eos, dtype=torch.long, device=input_ids.device)
        out = input_ids
        logits = self(input_ids, cache)[:, -1]
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator)
            if eos:
                nxt = torch.where(finished, torch.full_like(nxt, eos[0]), nxt)
                finished |= torch.isin(nxt, stops)
            out = torch.cat([out, nxt[:, None]], dim=1)
            if eos and bool(finished.all()):
                break
            logits = self(nxt[:, None], cache)[:, -1]
        return out


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
