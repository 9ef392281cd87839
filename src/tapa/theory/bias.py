"""The paper's Appendix I on trained models, and Assumption 2.1 checked on real q, k.

Distance bias: for N sampled queries m, one key at distance d1 in [0, a] and one at d2 in
[b, b + a]; Delta = score(m, m - d1) - score(m, m - d2) per layer and head. A
token-agnostic bias (RoPE) shows as Delta skewed positive (near beats far); TAPA's should
be centred on zero. The paper used a = 100, b = 10000 (its models trained at 8K and
fine-tuned at 32K); shorter models get both scaled by context / 8192.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from tapa.errors import ConfigError
from tapa.model import TapaLM
from tapa.paper import PAPER_CONTEXT, PAPER_FAR, PAPER_NEAR
from tapa.theory.scores import capture_qk, pair_scores


def default_distances(context: int) -> tuple[int, int]:
    """(a, b): the paper's 100 and 10000 when the model's context allows, else scaled by context / 8192."""
    if context > PAPER_FAR + PAPER_NEAR:
        return PAPER_NEAR, PAPER_FAR
    scale = context / PAPER_CONTEXT
    near = max(1, round(PAPER_NEAR * scale))
    return near, max(near + 1, round(PAPER_FAR * scale))


def moments(x: np.ndarray) -> dict[str, float]:
    mean, std = float(x.mean()), float(x.std())
    skew = float(((x - mean) ** 3).mean() / std**3) if std > 0 else 0.0
    return {"mean": mean, "std": std, "skewness": skew, "n": int(x.size)}


@dataclass
class BiasSample:
    deltas: np.ndarray  # (layers, heads, N)
    near: int
    far: int
    windows: int

    def summary(self) -> dict:
        layers, heads, _ = self.deltas.shape
        per_head = [{"layer": i, "head": h, **moments(self.deltas[i, h])} for i in range(layers) for h in range(heads)]
        return {
            "near": [0, self.near],
            "far": [self.far, self.far + self.near],
            "windows": self.windows,
            "pooled": moments(self.deltas.ravel()),
            "per_head": per_head,
        }


@torch.no_grad()
def sample_bias(
    model: TapaLM, documents: list[torch.Tensor], pairs: int, near: int, far: int, seed: int = 0
) -> BiasSample:
    """``pairs`` queries spread over windows of length far + near + 1 cut from ``documents``."""
    window = far + near + 1
    rows = [doc[s : s + window] for doc in documents for s in range(0, len(doc) - window + 1, window)]
    if not rows:
        longest = max((len(d) for d in documents), default=0)
        raise ConfigError(
            f"bias: need a document of at least {window} tokens for distances up to {far + near} "
            f"(longest: {longest}); lower --far or give more text"
        )
    gen = np.random.default_rng(seed)
    per_row = np.full(len(rows), pairs // len(rows))
    per_row[: pairs % len(rows)] += 1
    chunks = []
    for row, count in zip(rows, per_row, strict=True):
        if count == 0:
            continue
        qk = capture_qk(model, row[None].long())
        m = torch.as_tensor(gen.integers(far + near, window, count))
        d1 = torch.as_tensor(gen.integers(0, near + 1, count))
        d2 = torch.as_tensor(gen.integers(far, far + near + 1, count))
        chunks.append((pair_scores(model, qk, m, m - d1) - pair_scores(model, qk, m, m - d2)).numpy())
    return BiasSample(np.concatenate(chunks, axis=-1), near, far, int((per_row > 0).sum()))


def checkpoint_bias(
    model: TapaLM, docs: list[torch.Tensor], pairs: int, near: int | None = None, far: int | None = None, seed: int = 0
) -> tuple[BiasSample, dict]:
    """Appendix I for one model: the sample and its summary (with near and far; by default the paper's
    distances scaled to the model's training length, :func:`default_distances`)."""
    default_near, default_far = default_distances(model.config.max_seq_len)
    near = default_near if near is None else near
    far = default_far if far is None else far
    if pairs < 2:
        raise ConfigError(f"pairs: need at least 2 sampled queries, got {pairs}")
    if near < 1 or far <= near:
        raise ConfigError(f"bias: need 1 <= near < far, got near={near}, far={far}")
    sample = sample_bias(model, docs, pairs, near, far, seed)
    return sample, sample.summary()


def plot_bias(samples: dict[str, BiasSample], path, title: str) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.2))
    values = np.concatenate([s.deltas.ravel() for s in samples.values()])
    lo, hi = np.percentile(values, [0.5, 99.5])
    bins = np.linspace(lo, hi, 80)
    for label, sample in samples.items():
        stats = moments(sample.deltas.ravel())
        text = f"{label}: mean {stats['mean']:.2f}, std {stats['std']:.2f}, skew {stats['skewness']:.2f}"
        ax.hist(sample.deltas.ravel(), bins=bins, alpha=0.5, density=True, label=text)
    ax.axvline(0, color="k", lw=0.8)
    first = next(iter(samples.values()))
    ax.set_xlabel(
        f"Delta = score(near, d in [0, {first.near}]) - score(far, d in [{first.far}, {first.far + first.near}])"
    )
    ax.set_ylabel("density (all layers and heads)")
    ax.set_title(title + "\npaper: RoPE mean 4.1, std 0.85; TAPA mean 0.03, std 3.3")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def assumption_2_1(model: TapaLM, documents: list[torch.Tensor], pairs: int = 20000, seed: int = 0) -> dict:
    """Per layer and head: E A_d and E B_d over sampled (m >= n) pairs of one window, for every
    coordinate pair d (the model's RoPE pairing: (d, d + D/2), or (2d, 2d + 1) if interleaved),
    then their mean over d and spread across d."""
    length = min(model.config.max_seq_len, max(len(d) for d in documents))
    doc = next(d for d in documents if len(d) >= length)
    qk = capture_qk(model, doc[None, :length].long())
    gen = np.random.default_rng(seed)
    m = torch.as_tensor(gen.integers(0, length, pairs))
    n = torch.as_tensor((gen.random(pairs) * (m.numpy() + 1)).astype(np.int64))
    rows = []
    per_d = {}
    for layer, (q, k) in enumerate(qk):
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        dim = q.shape[-1]
        if model.config.rope_interleaved:
            idx0, idx1 = torch.arange(0, dim, 2), torch.arange(1, dim, 2)
        else:
            idx0, idx1 = torch.arange(dim // 2), torch.arange(dim // 2, dim)
        qm, kn = q[0][:, m], k[0][:, n]  # (H, P, D)
        a = qm[..., idx0] * kn[..., idx0] + qm[..., idx1] * kn[..., idx1]  # (H, P, D/2)
        b = qm[..., idx0] * kn[..., idx1] - qm[..., idx1] * kn[..., idx0]
        ea, eb = a.mean(1), b.mean(1)  # (H, D/2)
        se = a.std(1) / math.sqrt(pairs)
        for h in range(q.shape[1]):
            spread = float(ea[h].std())
            rows.append(
                {
                    "layer": layer,
                    "head": h,
                    "mu0": float(ea[h].mean()),
                    "nu0": float(eb[h].mean()),
                    "std_of_E_A_d_over_d": spread,
                    "std_of_E_B_d_over_d": float(eb[h].std()),
                    "mean_standard_error": float(se[h].mean()),
                    "constant_across_d": bool(spread < 0.25 * max(abs(float(ea[h].mean())), float(se[h].mean()) * 4)),
                }
            )
        per_d[layer] = {"E_A_d": ea.tolist(), "E_B_d": eb.tolist()}
    return {"window": length, "pairs": pairs, "heads": rows, "per_d": per_d}


def plot_assumption(result: dict, path, title: str) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()

    layers = sorted(result["per_d"], key=int)
    fig, axes = plt.subplots(2, len(layers), figsize=(3.2 * len(layers), 5.5), squeeze=False, sharex=True)
    for j, layer in enumerate(layers):
        for row, key in enumerate(("E_A_d", "E_B_d")):
            for h, values in enumerate(result["per_d"][layer][key]):
                axes[row][j].plot(values, lw=0.8, label=f"head {h}")
            axes[row][j].axhline(0, color="grey", lw=0.5)
            axes[row][j].set_title(f"layer {layer}: {key.replace('_', ' ')}", fontsize=9)
            axes[1][j].set_xlabel("coordinate pair d")
    axes[0][0].set_ylabel("mean over position pairs")
    axes[1][0].set_ylabel("mean over position pairs")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title + " (Assumption 2.1: flat lines = constant across d)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
