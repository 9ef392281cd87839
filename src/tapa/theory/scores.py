"""Pre-softmax attention scores of a trained model at chosen (query, key) position pairs,
without materialising any score matrix: run the model once, keep each layer's q and k
(projections, before RoPE), and score only the sampled pairs, the way each positional
scheme scores them (RoPE rotation incl. any scaling, TAPA Eq. 12 / its variants, ALiBi bias)."""

from __future__ import annotations

import math

import torch

from tapa.model import TapaLM
from tapa.positional import apply_rotary


@torch.no_grad()
def capture_qk(model: TapaLM, input_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: q (B, H, L, D) and k (B, H_kv, L, D), as projected (before any rotation)."""
    captured: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for i, block in enumerate(model.blocks):
        attn = block.attn
        for name, proj, heads in (("q", attn.wq, attn.n_heads), ("k", attn.wk, attn.n_kv)):

            def hook(_module, _inputs, output, i=i, name=name, heads=heads, dim=attn.head_dim):
                b, length, _ = output.shape
                captured.setdefault(i, {})[name] = output.view(b, length, heads, dim).transpose(1, 2).float()

            hooks.append(proj.register_forward_hook(hook))
    try:
        model.eval()(input_ids)
    finally:
        for h in hooks:
            h.remove()
    return [(captured[i]["q"], captured[i]["k"]) for i in range(len(model.blocks))]


def _expand(k: torch.Tensor, heads: int) -> torch.Tensor:
    return k.repeat_interleave(heads // k.shape[1], dim=1) if k.shape[1] != heads else k


@torch.no_grad()
def pair_scores(
    model: TapaLM, qk: list[tuple[torch.Tensor, torch.Tensor]], m: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """Scores (layers, H, P) of queries at positions ``m`` against keys at ``n`` (batch row 0)."""
    config = model.config
    length = qk[0][0].shape[2]
    m, n = m.long(), n.long()
    tables = model.rope(torch.arange(length)) if config.positional == "rope" else None
    out = []
    for layer, (q, k) in enumerate(qk):
        attn = model.blocks[layer].attn
        q, k = q[:1], _expand(k[:1], q.shape[1])
        if config.positional == "tapa":
            parts = attn.phase(q, k)
            amp = (parts.qa[0][:, m] * parts.ka[0][:, n]).sum(-1)
            prod = (parts.qp[0][:, m] * parts.kp[0][:, n]).sum(-1)
            distance = (m - n).abs().double().pow(config.tapa_alpha)
            out.append((amp * torch.cos(2 * math.pi * distance.to(prod.dtype) * prod)).float())
            continue
        if tables is not None:
            cos, sin = tables
            q = apply_rotary(q, cos, sin, config.rope_interleaved)
            k = apply_rotary(k, cos, sin, config.rope_interleaved)
        scores = (q[0][:, m] * k[0][:, n]).sum(-1) / math.sqrt(q.shape[-1])
        if config.positional == "alibi":
            scores = scores - attn.slopes.view(-1, 1).float() * (m - n).abs().float()
        out.append(scores.float())
    return torch.stack(out)
