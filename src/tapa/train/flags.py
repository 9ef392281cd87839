"""The command-line flags of ``tapa train`` / ``tapa finetune``, as data: flag -> (config
field, argparse type, help). The CLI builds its parsers from these tables and ``tapa plan``
writes a model's flags from them, so each flag has one home."""

from __future__ import annotations

import argparse
from typing import Any


# flag -> (TrainConfig field, type, help)
def _bool(text: str) -> bool:
    """true/false, yes/no, 1/0 (argparse type for boolean model settings)."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


TRAIN_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--data": ("data", str, "'books' (default), a .txt/.md/.jsonl file, a directory, or hf:NAME"),
    "--val-data": ("val_data", str, "a separate validation file or directory (own corpora only)"),
    "--text-field": ("text_field", str, "JSONL / dataset field holding the text (default: text)"),
    "--cache-dir": ("cache_dir", str, "token cache directory (default: $TAPA_CACHE or ~/.cache/tapa)"),
    "--seq-len": ("seq_len", int, "training segment length in tokens"),
    "--batch-size": ("batch_size", int, "global batch, in sequences per optimizer step"),
    "--grad-accum": ("grad_accum", int, "micro-batches per step (batch-size must divide)"),
    "--steps": ("steps", int, "optimizer steps"),
    "--lr": ("lr", float, "peak learning rate (default: the scheme's swept default)"),
    "--warmup-steps": ("warmup_steps", int, "linear warmup steps (default: 5%% of steps)"),
    "--min-lr-ratio": ("min_lr_ratio", float, "cosine floor as a fraction of the peak (default: 0.1)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay (default: 0, as in the paper)"),
    "--grad-clip": ("grad_clip", float, "clip the global gradient norm (0 disables; default: 1.0)"),
    "--precision": ("precision", str, "fp32 or bf16 (autocast)"),
    "--activation-checkpointing": ("activation_checkpointing", _bool, "recompute activations in backward (true/false)"),
    "--parallel": ("parallel", str, "under torchrun: ddp (replicated) or fsdp (FSDP2, sharded; sharded checkpoints)"),
    "--compile": ("compile", _bool, "torch.compile each block (true/false)"),
    "--wandb": ("wandb", _bool, "also log to Weights & Biases (true/false; pip install 'tapa[wandb]')"),
    "--seed": ("seed", int, "seed of the model init and the data order"),
    "--device": ("device", str, "auto, cpu, cuda, cuda:1, ..."),
    "--eval-every": ("eval_every", int, "validate every N steps (0: only at the end)"),
    "--eval-segments": ("eval_segments", int, "validation segments per evaluation"),
    "--save-every": ("save_every", int, "checkpoint every N steps (0: only at the end)"),
    "--keep-last": ("keep_last", int, "checkpoints to keep"),
}
PRETRAIN_ONLY = {
    "--tokenizer": ("tokenizer", str, "byte (default), bpe (trained on the train split), or a tokenizer.json/.model"),
    "--bpe-vocab-size": ("bpe_vocab_size", int, "vocabulary of the trained BPE (default: 4096)"),
}


MODEL_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--positional": ("positional", str, "tapa, rope, alibi or nope"),
    "--d-model": ("d_model", int, "model width"),
    "--n-layers": ("n_layers", int, "decoder blocks"),
    "--n-heads": ("n_heads", int, "attention heads"),
    "--n-kv-heads": ("n_kv_heads", int, "key/value heads (GQA)"),
    "--head-dim": ("head_dim", int, "per-head width (default d_model / n_heads)"),
    "--ffn-hidden": ("ffn_hidden", int, "SwiGLU hidden width"),
    "--tie-embeddings": ("tie_embeddings", _bool, "share the input embedding and the output head (true/false)"),
    "--norm-eps": ("norm_eps", float, "RMSNorm epsilon"),
    "--max-seq-len": ("max_seq_len", int, "training length recorded in the model (default: --seq-len)"),
    "--tapa-alpha": ("tapa_alpha", float, "TAPA distance exponent alpha"),
    "--tapa-theta": ("tapa_theta", float, "TAPA amplitude fraction theta"),
    "--tapa-phase": ("tapa_phase", str, "quadratic, quadratic_full or linear"),
    "--tapa-phase-scale": (
        "tapa_phase_scale",
        float,
        "s in cos(s |m-n|^alpha q_P.k_P / sqrt(D_P)): 2 pi as in the paper (default 6.283...), "
        "1 as the public forward-only code, 0 turns the phase off",
    ),
    "--rope-base": ("rope_base", float, "RoPE base"),
    "--partial-rotary-factor": ("partial_rotary_factor", float, "fraction of each head RoPE rotates (partial RoPE)"),
    "--attn-impl": ("attn_impl", str, "auto, reference, chunked, fused (CPU) or triton (CUDA)"),
}
ROPE_SCALING_HELP = (
    'a transformers rope_scaling dict as JSON, e.g. \'{"rope_type": "yarn", "factor": 8}\' '
    "(legacy 'type', rope_theta inside it and top-level lengths read as transformers does)"
)
# fields a resumed run may change freely (they do not change the numbers)
FREE_ON_RESUME = {"device", "cache_dir", "out"}
