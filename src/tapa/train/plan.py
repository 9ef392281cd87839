"""``tapa plan CONFIG --gpus N --seq-len L``: what a training run will cost before it runs.

Closed forms (stated so they can be checked):

- parameters: embeddings V d (+ V d for an untied head) + per layer d (H + 2 H_kv) D_h
  (q, k, v) + H D_h d (o) + 3 d F (SwiGLU) + 2 d (norms), + d (final norm);
- training FLOPs per token: 6 N (N = non-embedding parameters + the output head, which is a
  matmul) + 6 n_layers L H D_h (causal attention: half of the 2 L x L products, times 3 for
  forward + backward) — TAPA's cosine adds a few elementwise operations per score, not counted;
- memory per GPU with FSDP (params, grads and AdamW states sharded over the GPUs), bf16
  compute with fp32 master weights: 2 (bf16 params) + 4 (fp32 master) + 4 (fp32 grads) +
  8 (AdamW m, v) = 18 bytes per parameter / N_gpus; DDP keeps all of it on every GPU;
- activations per sequence (bf16; Korthikanti et al. 2022 without the L x L term, which
  the fused/flash kernels never store): 34 L d bytes per layer; with activation
  checkpointing 2 L d bytes per layer (the block inputs) plus one layer recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tapa.model import ModelConfig
from tapa.model.params import parameter_count

BYTES_PER_PARAM = {"fsdp": 18, "ddp": 18}


@dataclass
class Plan:
    parameters: int
    non_embedding: int
    flops_per_token: float
    state_gib_per_gpu: float
    activation_gib_per_sequence: float
    activation_gib_per_sequence_checkpointed: float


def plan(config: ModelConfig, gpus: int, seq_len: int, parallel: str = "fsdp") -> Plan:
    total, body = parameter_count(config)
    head = config.vocab_size * config.d_model
    flops = 6 * (body + head) + 6 * config.n_layers * seq_len * config.n_heads * config.head_size
    shards = gpus if parallel == "fsdp" else 1
    state = BYTES_PER_PARAM[parallel] * total / shards / 2**30
    per_layer = 34 * seq_len * config.d_model
    act = config.n_layers * per_layer / 2**30
    act_ckpt = (config.n_layers * 2 * seq_len * config.d_model + per_layer) / 2**30
    return Plan(total, body, flops, state, act, act_ckpt)


def describe(config: ModelConfig, gpus: int, seq_len: int, parallel: str) -> str:
    p = plan(config, gpus, seq_len, parallel)
    lines = [
        f"model: {config.positional}, d_model {config.d_model}, {config.n_layers} layers, {config.n_heads} heads "
        f"({config.kv_heads} kv) of {config.head_size}, SwiGLU {config.ffn_dim}, vocab {config.vocab_size}",
        f"parameters: {p.parameters / 1e9:.3f}B ({p.non_embedding / 1e9:.3f}B non-embedding)",
        f"training FLOPs per token at L = {seq_len}: {p.flops_per_token / 1e9:.1f} GFLOP "
        f"({p.flops_per_token * seq_len / 1e12:.1f} TFLOP per sequence)",
        f"{parallel.upper()} over {gpus} GPU(s): params + grads + AdamW = {p.state_gib_per_gpu:.1f} GiB per GPU",
        f"activations per sequence of {seq_len}: {p.activation_gib_per_sequence:.1f} GiB, with "
        f"--activation-checkpointing {p.activation_gib_per_sequence_checkpointed:.2f} GiB",
        f"command: torchrun --standalone --nproc_per_node={gpus} -m tapa.cli train {model_flags(config)} "
        f"--seq-len {seq_len} --precision bf16 --parallel {parallel} --activation-checkpointing true "
        f"--data SHARDS --out runs/NAME   (SHARDS: a tapa tokenize folder, which holds its tokenizer)",
    ]
    return "\n".join(lines)


def model_flags(config: ModelConfig) -> str:
    """The ``tapa train`` flags that build ``config`` (those that differ from the defaults)."""
    from tapa.train.flags import MODEL_FLAGS

    default = ModelConfig(positional=config.positional)
    flags = []
    for flag, (name, _type, _help) in MODEL_FLAGS.items():
        value = getattr(config, name)
        if value != getattr(default, name) and value is not None and not isinstance(value, dict):
            text = (
                f"{value:g}" if isinstance(value, float) else str(value).lower() if isinstance(value, bool) else value
            )
            flags.append(f"{flag} {text}")
    if config.positional != "tapa":
        flags.insert(0, f"--positional {config.positional}")
    return " ".join(dict.fromkeys(flags))
