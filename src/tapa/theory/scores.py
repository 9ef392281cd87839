"""Pre-softmax attention scores of a trained model at chosen (query, key) position pairs,
without materialising any score matrix: run the model once, keep each layer's q and k
(projections, before RoPE), and score only the sampled pairs, the way each positional
scheme scores them (RoPE rotation incl. any scaling, TAPA Eq. 12 / its variants, ALiBi bias)."""

from __future__ import annotations

import torch

from tapa.model import TapaLM


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


@torch.no_grad()
def pair_scores(
    model: TapaLM, qk: list[tuple[torch.Tensor, torch.Tensor]], m: torch.Tensor, n: torch.Tensor
) -> torch.Tensor:
    """Scores (layers, H, P) of queries at positions ``m`` against keys at ``n`` (batch row 0),
    as each layer's scheme scores them (:meth:`tapa.model.attention.Attention.score_pairs`)."""
    m, n = m.long(), n.long()
    out = []
    for layer, (q, k) in enumerate(qk):
        attn = model.blocks[layer].attn
        out.append(attn.score_pairs(q[:1, :, m], k[:1, :, n], m, n, model.rope)[0].float())
    return torch.stack(out)
