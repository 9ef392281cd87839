"""Mechanism diagnostics: how a trained model's attention depends on distance and content.

All quantities are computed from the model's own q and k (captured by
:func:`tapa.theory.scores.capture_qk`) with the full score matrix, on a batch of text:

- **phase** (TAPA): ``phi(m, n) = 2 pi |m-n|^alpha (q_P . k_P) / sqrt(D_P)`` per layer and
  distance: median and 90th percentile of ``|phi|``, mean ``cos(phi)``;
- **distance share**: the fraction of the variance of a per-pair quantity (TAPA's
  ``cos(phi)``; every model's pre-softmax score) explained by the distance alone,
  ``eta^2 = Var_d(E[x | d]) / Var(x)`` over all causal pairs (m > n) at distances up to
  ``max_distance``, per head; ``1 - eta^2`` is the share of content (which tokens meet);
- **attention mass** within the last ``d`` tokens (``sum_{1 <= m-n <= d} p(m, n)``) for
  d = 1, 2, 4, ..., per head, averaged over queries far enough from the start;
- **previous-token score**: mean ``p(m, m-1)``; **induction score**: on a random token
  sequence repeated twice, mean attention from position t in the second copy to t - T + 1
  (the token after the earlier occurrence), per head.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tapa.attention.reference import causal_mask, distance_phase, expand_heads
from tapa.model import TapaLM
from tapa.theory.scores import capture_qk


@torch.no_grad()
def layer_scores(model: TapaLM, input_ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per layer: ``scores`` (B, H, L, L) pre-softmax (future masked with -inf), ``probs``
    and, for TAPA, ``phase`` (B, H, L, L) = s |m-n|^alpha * (q_P . k_P)/sqrt(D_P), s the model's phase scale
    (2 pi by default; the query parts carry s / 2 pi)."""
    config = model.config
    length = input_ids.shape[1]
    pos = torch.arange(length)
    future = causal_mask(pos, pos)
    out = []
    for layer, (q, k) in enumerate(capture_qk(model, input_ids)):
        attn = model.blocks[layer].attn
        entry: dict[str, torch.Tensor] = {}
        scores = attn.score_matrix(q, k, pos, pos, model.rope)  # the scheme's own scores
        if config.positional == "tapa":
            parts = attn.phase(q, expand_heads(k, q.shape[1]))
            prod = parts.qp @ parts.kp.to(parts.qp.dtype).transpose(-1, -2)  # key parts: the keys' dtype
            entry["phase"] = distance_phase(pos, pos, config.tapa_alpha) * prod
        scores = scores.float().masked_fill(future, float("-inf"))
        entry["scores"], entry["probs"] = scores, scores.softmax(-1)
        out.append(entry)
    return out


def distance_pairs(length: int, max_distance: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query index m, key index n and distance m - n of every causal pair with 1 <= m-n <= max_distance."""
    m, n = torch.tril_indices(length, length, offset=-1)
    d = m - n
    keep = d <= max_distance
    return m[keep], n[keep], d[keep]


def distance_share(values: torch.Tensor, distances: torch.Tensor) -> float:
    """eta^2: share of the variance of ``values`` (..., P) explained by the group means of
    ``distances`` (P,) — 1 when values depend on distance only, ~0 when not at all."""
    x = values.reshape(-1, values.shape[-1]).double()
    total = x.var(unbiased=False).item()
    if total == 0:
        return 0.0
    groups = torch.unique(distances)
    mean = x.mean()
    between = sum(((x[:, distances == g].mean() - mean) ** 2).item() * (distances == g).sum().item() for g in groups)
    return between / (distances.numel() * total)


def per_head_share(values: torch.Tensor, distances: torch.Tensor) -> list[float]:
    """:func:`distance_share` of each head of ``values`` (B, H, P), pooling batch and pairs."""
    return [distance_share(values[:, h], distances) for h in range(values.shape[1])]


def powers_of_two(limit: int) -> list[int]:
    return [2**i for i in range(int(math.log2(limit)) + 1)]


def attention_profile(probs: torch.Tensor, distances: list[int]) -> torch.Tensor:
    """(H, len(distances)): mass within the last d tokens (excluding the query itself),
    averaged over batch and over queries m >= max(distances) (all of them have every key)."""
    length = probs.shape[-1]
    start = max(distances)
    idx = torch.arange(length)
    rel = idx[:, None] - idx[None, :]
    rows = []
    for d in distances:
        window = ((rel >= 1) & (rel <= d)).float()
        mass = (probs * window).sum(-1)[..., start:]
        rows.append(mass.mean(dim=(0, 2)))
    return torch.stack(rows, dim=-1)


def previous_token_score(probs: torch.Tensor) -> torch.Tensor:
    """(H,): mean attention from each position m >= 1 to m - 1."""
    return torch.diagonal(probs, offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))


@torch.no_grad()
def induction_score(model: TapaLM, period: int, batch: int = 4, seed: int = 0, low: int = 0) -> torch.Tensor:
    """(layers, H): mean attention from t in the second copy of a random sequence to t - period + 1."""
    g = torch.Generator().manual_seed(seed)
    half = torch.randint(low, model.config.vocab_size, (batch, period), generator=g)
    ids = torch.cat([half, half], dim=1)
    out = []
    for entry in layer_scores(model, ids):
        p = entry["probs"]
        t = torch.arange(period, 2 * period)
        out.append(p[:, :, t, t - period + 1].mean(dim=(0, 2)))
    return torch.stack(out)


@torch.no_grad()
def diagnose(model: TapaLM, input_ids: torch.Tensor, max_distance: int | None = None) -> dict[str, Any]:
    """Every diagnostic for one model on ``input_ids`` (B, L); JSON-serialisable."""
    length = input_ids.shape[1]
    max_distance = max_distance or length // 2
    m, n, d = distance_pairs(length, max_distance)
    distances = powers_of_two(max_distance)
    result: dict[str, Any] = {
        "positional": model.config.positional,
        "length": length,
        "distances": distances,
        "layers": [],
    }
    for entry in layer_scores(model.eval(), input_ids):
        probs = entry["probs"]
        layer: dict[str, Any] = {
            "score_distance_share": per_head_share(entry["scores"][..., m, n], d),
            "attention_within": attention_profile(probs, distances).tolist(),
            "previous_token": previous_token_score(probs).tolist(),
        }
        if "phase" in entry:
            phase = entry["phase"][..., m, n]
            cos = torch.cos(phase)
            layer["cos_distance_share"] = per_head_share(cos, d)
            by = {}
            for dist in distances:
                ph = phase[..., d == dist].abs().flatten().double()
                by[str(dist)] = {
                    "median_abs": ph.median().item(),
                    "p90_abs": ph.quantile(0.9).item(),
                    "mean_cos": torch.cos(phase[..., d == dist]).double().mean().item(),
                }
            layer["phase"] = by
        result["layers"].append(layer)
    result["induction"] = induction_score(model, period=max(8, length // 4)).tolist()
    return result


def text_batch(
    run: str, batch: int, length: int, split: str = "validation", cache_dir: str | None = None
) -> torch.Tensor:
    """``batch`` consecutive segments of ``length`` tokens of the books' ``split``, in the
    run's own tokenizer (the same text for every run that shares a tokenizer)."""
    from tapa.data.tokenizer import load_checkpoint_tokenizer
    from tapa.evaluate.heldout import heldout_documents

    docs = heldout_documents(load_checkpoint_tokenizer(run), "books", split, batch * length + 1, cache_dir)
    flat = torch.cat(docs)[: batch * length]
    return flat.view(batch, length)


def diagnose_run(run: str, batch: int = 4, length: int | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """:func:`diagnose` of a saved run on validation text at its training length."""
    from tapa.model import load_pretrained

    model = load_pretrained(run)
    length = length or model.config.max_seq_len
    check_score_memory(model, batch, length)
    return diagnose(model, text_batch(run, batch, length, cache_dir=cache_dir))


def check_score_memory(model: TapaLM, batch: int, length: int, share: float = 0.5) -> None:
    """Refuse a length whose materialised score matrices (scores, probabilities and phases:
    3 x layers x heads x batch x L^2 float32) would take more than ``share`` of physical memory."""
    import os

    from tapa.errors import ConfigError

    c = model.config
    need = 3 * c.n_layers * c.n_heads * batch * length**2 * 4
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > share * total:
        raise ConfigError(
            f"study diagnose: a segment length of {length} needs about {need / 2**30:.1f} GiB for the "
            f"score matrices ({c.n_layers} layers x {c.n_heads} heads x {batch} segments x {length}^2), "
            f"more than half of this machine's {total / 2**30:.1f} GiB; use a shorter "
            "--segment-length or fewer --segments"
        )


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a table row needs: per layer the best previous-token head, the
    best induction head, the mean distance share of the scores, TAPA's median |phase| at
    distance 1 and the mean distance share of its cosine."""
    layers = result["layers"]
    out: dict[str, Any] = {
        "previous_token": [max(layer["previous_token"]) for layer in layers],
        "induction": [max(heads) for heads in result["induction"]],
        "score_distance_share": [sum(x["score_distance_share"]) / len(x["score_distance_share"]) for x in layers],
        "within_1": [max(h[0] for h in layer["attention_within"]) for layer in layers],
    }
    if "phase" in layers[0]:
        out["phase_median_d1"] = [layer["phase"]["1"]["median_abs"] for layer in layers]
        out["cos_distance_share"] = [sum(x["cos_distance_share"]) / len(x["cos_distance_share"]) for x in layers]
        out["mean_cos_d1"] = [layer["phase"]["1"]["mean_cos"] for layer in layers]
    return out


def phase_gradient_ratio(model: TapaLM, input_ids: torch.Tensor) -> list[float]:
    """Per layer: norm of the next-token loss gradient on the phase rows of W_q and W_k
    (the last D_P output rows of each head) over the norm on the amplitude rows. The
    gradient reaching the phase is proportional to sin(phase): near 0 where the phase is."""
    from tapa.attention.validation import amplitude_dim

    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        logits = model(input_ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), input_ids[:, 1:].flatten())
        loss.backward()
    out = []
    for block in model.blocks:
        attn = block.attn
        d_a = amplitude_dim(attn.head_dim, model.config.tapa_theta)
        amp = phase = 0.0
        for proj, heads in ((attn.wq, attn.n_heads), (attn.wk, attn.n_kv)):
            g = proj.weight.grad.view(heads, attn.head_dim, -1)
            amp += float(g[:, :d_a].pow(2).sum())
            phase += float(g[:, d_a:].pow(2).sum())
        out.append((phase / amp) ** 0.5 if amp > 0 else float("nan"))
    model.zero_grad(set_to_none=True)
    return out
