"""TapaForCausalLM: tapa's Llama-style decoder as a transformers model (KV cache, generate).

TAPA attention (Eq. 12 of arXiv 2509.12635), with D_A = theta * D amplitude and
D_P = D - D_A phase coordinates of each head:

    score(m, n) = (q_A . k_A / sqrt(D_A)) * cos(s |m - n|^alpha (q_P . k_P) / sqrt(D_P))

with the phase scale s = ``tapa_phase_scale`` (2 pi in the paper; an export without the
field means 2 pi), then a causal softmax; no RoPE anywhere. Also the linear phase (Eq. 16), the learnable
M / N of Eq. 9 (``quadratic_full``), NoPE and ALiBi. Scores are materialised (L x L per
head) in float32: clear rather than fast; tapa's own kernels are the fast path.
Written by ``tapa export-hf``; needs only torch and transformers. It therefore restates
what tapa's own modules define (RMSNorm, the ALiBi slopes, the TAPA phase parts): a
deliberate copy, held equal to tapa's model by the export round-trip tests.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tapa import TapaConfig


class TapaRMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x if x.dtype == torch.float64 else x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def alibi_slopes(n_heads):
    def power_of_two(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_heads & (n_heads - 1) == 0:
        slopes = power_of_two(n_heads)
    else:
        lower = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


class TapaAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        d, qkv_bias = config.hidden_size, config.attention_bias or config.qkv_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=config.attention_bias)
        self.d_a = round(config.tapa_theta * self.head_dim)
        if config.positional == "tapa" and config.tapa_phase == "quadratic_full":
            self.phase_m = nn.Parameter(torch.zeros(self.n_heads, self.head_dim, self.head_dim))
            self.phase_n = nn.Parameter(torch.zeros(self.n_heads, self.head_dim, self.head_dim))

    def tapa_logits(self, q, k, dist):
        """Eq. 12 (or its variants) from q (B, H, Lq, D) and k (B, H, Lk, D) in float32 or float64."""
        c, d_a = self.config, self.d_a
        d_p = self.head_dim - d_a
        if c.tapa_phase == "quadratic":
            amp = (q[..., :d_a] @ k[..., :d_a].transpose(-1, -2)) / math.sqrt(d_a)
            prod = (q[..., d_a:] @ k[..., d_a:].transpose(-1, -2)) / math.sqrt(d_p)
        elif c.tapa_phase == "linear":  # phi = (sum q_P + sum k_P) / sqrt(D_P)
            amp = (q[..., :d_a] @ k[..., :d_a].transpose(-1, -2)) / math.sqrt(d_a)
            prod = (q[..., d_a:].sum(-1, keepdim=True) + k[..., d_a:].sum(-1).unsqueeze(-2)) / math.sqrt(d_p)
        else:  # quadratic_full: q^T M k and q^T N k with learnable M, N per head
            amp = torch.einsum("bhld,hde->bhle", q, self.phase_m.to(q.dtype)) @ k.transpose(-1, -2)
            prod = torch.einsum("bhld,hde->bhle", q, self.phase_n.to(q.dtype)) @ k.transpose(-1, -2)
        scale = getattr(c, "tapa_phase_scale", 2 * math.pi)
        return amp * torch.cos(scale * dist.pow(c.tapa_alpha) * prod)

    def forward(self, x, q_pos, k_mask, past_key_values=None):
        """(output, attention weights (B, H, Lq, Lk) in x's dtype): the softmaxed scores, always
        materialised here, as in transformers' eager attention."""
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, length, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, length, self.n_kv, self.head_dim).transpose(1, 2)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        groups = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        k_pos = torch.arange(k.shape[2], device=x.device)
        rel = q_pos[:, None] - k_pos[None, :]
        dist = rel.abs().float()
        positional = self.config.positional
        cd = torch.float64 if q.dtype == torch.float64 else torch.float32  # float32 at least, as in tapa
        q, k, dist = q.to(cd), k.to(cd), dist.to(cd)
        if positional == "tapa":
            logits = self.tapa_logits(q, k, dist)
        else:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if positional == "alibi":
                # computed here, not kept as a buffer: transformers builds models on the meta device
                slopes = alibi_slopes(self.n_heads).to(device=logits.device, dtype=cd)
                logits = logits - slopes.view(-1, 1, 1) * dist
        blocked = (rel < 0)[None, None] | ~k_mask[:, None, None, :]
        probs = logits.masked_fill(blocked, float("-inf")).softmax(-1).nan_to_num(0.0)
        out = (probs @ v.to(cd)).to(x.dtype)
        return self.o_proj(out.transpose(1, 2).reshape(b, length, -1)), probs.to(x.dtype)


class TapaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TapaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.input_layernorm = TapaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = TapaAttention(config, layer_idx)
        self.post_attention_layernorm = TapaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = TapaMLP(config)

    def forward(self, x, q_pos, k_mask, past_key_values=None):
        """(hidden states after the block, the attention weights)."""
        attended, weights = self.self_attn(self.input_layernorm(x), q_pos, k_mask, past_key_values)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), weights


class TapaPreTrainedModel(PreTrainedModel):
    config_class = TapaConfig
    base_model_prefix = "model"
    _no_split_modules = ["TapaDecoderLayer"]  # noqa: RUF012 (transformers' convention)
    supports_gradient_checkpointing = True
    # scores are always materialised (the attention weights can be returned whatever is asked):
    # "eager" and "sdpa" both run this path, so a config or call naming either loads
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                module.bias.data.zero_()
        elif isinstance(module, TapaRMSNorm):
            module.weight.data.fill_(1.0)


class TapaModel(TapaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TapaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = TapaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False  # set by gradient_checkpointing_enable()
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        past_key_values=None,
        inputs_embeds=None,
        output_hidden_states=False,
        output_attentions=False,
    ):
        """(final hidden states, all hidden states or None, all attention weights or None).

        Hidden states as transformers' Llama gives them: the embeddings, each block's output,
        and last the final norm's output (num_hidden_layers + 1 tensors)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, length = x.shape[:2]
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        q_pos = torch.arange(past, past + length, device=x.device)
        if attention_mask is None:
            attention_mask = torch.ones(b, past + length, dtype=torch.bool, device=x.device)
        k_mask = attention_mask.bool()
        hidden, weights = [], []
        for layer in self.layers:
            hidden.append(x)
            if self.gradient_checkpointing and self.training:
                x, w = self._gradient_checkpointing_func(layer.__call__, x, q_pos, k_mask, past_key_values)
            else:
                x, w = layer(x, q_pos, k_mask, past_key_values)
            weights.append(w)
        x = self.norm(x)
        hidden.append(x)
        return x, (tuple(hidden) if output_hidden_states else None), (tuple(weights) if output_attentions else None)


class TapaForCausalLM(TapaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012

    def __init__(self, config):
        super().__init__(config)
        self.model = TapaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        cache=None,
        use_cache=None,
        labels=None,
        past_key_values=None,
        inputs_embeds=None,
        output_hidden_states=None,
        output_attentions=None,
        **kwargs,
    ):
        # transformers >= 5.x names the KV cache `cache`; earlier versions `past_key_values`
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = DynamicCache()
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError("cache must be a transformers Cache")
        config = self.config
        want_hidden = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        want_attn = output_attentions if output_attentions is not None else config.output_attentions
        hidden, all_hidden, all_attn = self.model(input_ids, attention_mask, cache, inputs_embeds,
                                                  bool(want_hidden), bool(want_attn))  # fmt: skip
        logits = self.lm_head(hidden)  # in the model's dtype, as transformers' Llama returns them
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        field = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=all_hidden, attentions=all_attn,
                                      **{field: cache})  # fmt: skip
