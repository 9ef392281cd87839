"""Passkey retrieval (Mohtashami & Jaggi 2023): a random key of digits hidden at a chosen
depth in filler text, asked for at the end.

A prompt is, in tokens, exactly ``length`` long:

    INTRO + filler[:k] + NEEDLE + filler[k:] + QUESTION        answer = " " + key

with k = round(depth * filler size). Two fillers: sentences of a held-out book
(``books``), or the classic "The grass is green. The sky is blue..." (``grass``). Scoring:
``greedy`` (the greedy continuation equals the answer) and ``candidates`` (the true key
has the highest log-likelihood among ``n_candidates`` keys of the same length).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from tapa.data.corpus import load_split
from tapa.data.tokenizer import Tokenizer
from tapa.errors import ConfigError
from tapa.model import TapaLM

INTRO = "Find the pass key hidden in this text and remember it.\n"  # short: byte models train at 256
GRASS = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"
KEY_DIGITS = 5
N_CANDIDATES = 10  # keys ranked by log-likelihood; chance accuracy 1 / N_CANDIDATES
FILLERS = ("books", "grass")


@dataclass
class PasskeyPrompt:
    ids: torch.Tensor  # (length,) int64
    key: str
    answer: list[int]  # token ids of " " + key
    needle_start: int  # token index where the needle begins
    depth: float


@lru_cache(maxsize=4)
def _filler_book(split: str) -> str:
    return load_split(split)[0]


def filler_ids(tokenizer: Tokenizer, kind: str, count: int, offset: int = 0, split: str = "test") -> list[int]:
    """``count`` filler tokens; ``books`` starts ``offset`` tokens into the first book of
    ``split`` (the held-out test book for evaluation; fine-tuning uses a training book)."""
    if kind == "grass":
        unit = tokenizer.encode(GRASS)
        reps = (count + offset) // len(unit) + 1
        return (unit * reps)[offset : offset + count]
    if kind == "books":
        text = _filler_book(split)
        ids = tokenizer.encode(text[: 8 * (count + offset) + 1000])
        if len(ids) < count + offset:
            ids = tokenizer.encode(text)
        if len(ids) < count + offset:
            raise ConfigError(f"passkey: the filler book is shorter than {count + offset} tokens; use --filler grass")
        return ids[offset : offset + count]
    raise ConfigError(f"passkey: unknown filler {kind!r}; choose one of {', '.join(FILLERS)}")


def random_key(rng: random.Random, digits: int = KEY_DIGITS) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def make_prompt(
    tokenizer: Tokenizer,
    length: int,
    depth: float,
    key: str,
    filler: str = "grass",
    offset: int = 0,
    split: str = "test",
) -> PasskeyPrompt:
    if not 0 <= depth <= 1:
        raise ConfigError(f"passkey: depth must be in [0, 1], got {depth}")
    intro, needle = tokenizer.encode(INTRO), tokenizer.encode(NEEDLE.format(key=key))
    question = tokenizer.encode(QUESTION)
    room = length - len(intro) - len(needle) - len(question)
    if room < 0:
        need = length - room
        raise ConfigError(f"passkey: length {length} is too short for the prompt ({need} tokens without filler)")
    body = filler_ids(tokenizer, filler, room, offset, split)
    before = round(depth * room)
    ids = intro + body[:before] + needle + body[before:] + question
    return PasskeyPrompt(torch.tensor(ids), key, tokenizer.encode(" " + key), len(intro) + before, depth)


@torch.no_grad()
def greedy_correct(model: TapaLM, prompt: PasskeyPrompt) -> bool:
    device = next(model.parameters()).device
    out = model.generate(prompt.ids[None].to(device), len(prompt.answer), temperature=0.0)
    return out[0, len(prompt.ids) :].tolist() == prompt.answer


@torch.no_grad()
def candidate_scores(model: TapaLM, prompt: PasskeyPrompt, candidates: list[list[int]]) -> torch.Tensor:
    """Total log-likelihood of each candidate continuation (all the same length) after the prompt."""
    device = next(model.parameters()).device
    cands = torch.tensor(candidates)
    rows = torch.cat([prompt.ids[None].expand(len(candidates), -1), cands], dim=1).to(device)
    logits = model(rows[:, :-1])[:, len(prompt.ids) - 1 :]
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, rows[:, len(prompt.ids) :, None]).squeeze(-1).sum(-1).cpu()


def candidate_correct(
    model: TapaLM, tokenizer: Tokenizer, prompt: PasskeyPrompt, rng: random.Random, n_candidates: int = N_CANDIDATES
) -> bool:
    """The true key ranks first (strictly) among itself and ``n_candidates - 1`` other keys."""
    others: list[list[int]] = []
    for _ in range(100 * n_candidates):
        if len(others) == n_candidates - 1:
            break
        ids = tokenizer.encode(" " + random_key(rng, len(prompt.key)))
        if ids != prompt.answer and len(ids) == len(prompt.answer) and ids not in others:
            others.append(ids)
    if not others:
        raise ConfigError(
            "passkey: this tokenizer gives no other key the same number of tokens as the true one, so keys "
            "cannot be ranked; use a byte or BPE tokenizer that splits digits evenly"
        )
    scores = candidate_scores(model, prompt, [prompt.answer, *others])
    return bool((scores[0] > scores[1:]).all())


def passkey_grid(
    model: TapaLM,
    tokenizer: Tokenizer,
    lengths: list[int],
    depths: list[float],
    trials: int,
    filler: str = "books",
    seed: int = 0,
    n_candidates: int = N_CANDIDATES,
    on_cell=None,
) -> list[dict]:
    """Accuracy (greedy and candidate ranking) for every (length, depth); ``trials`` keys each."""
    model.eval()
    cells = []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            greedy = ranked = 0
            for _ in range(trials):
                key = random_key(rng)
                prompt = make_prompt(tokenizer, length, depth, key, filler, offset=rng.randrange(0, 2000))
                greedy += greedy_correct(model, prompt)
                ranked += candidate_correct(model, tokenizer, prompt, rng, n_candidates)
            cell = {
                "length": length,
                "depth": depth,
                "trials": trials,
                "greedy": greedy / trials,
                "candidates": ranked / trials,
            }
            cells.append(cell)
            if on_cell is not None:
                on_cell(cell)
    return cells


def plot_passkey(cells: list[dict], training_length: int, path, title: str, n_candidates: int = 10) -> None:
    from tapa.utils.report import pyplot

    plt = pyplot()
    import numpy as np

    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, metric in zip(axes, ("greedy", "candidates"), strict=True):
        grid = np.array(
            [[next(c[metric] for c in cells if c["length"] == n and c["depth"] == d) for n in lengths] for d in depths]
        )
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(lengths)), [f"{n}\n({n / training_length:g}x)" for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        for i in range(len(depths)):
            for j in range(len(lengths)):
                ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k")
        ax.set_xlabel("prompt length in tokens (x training length)")
        ranked = f"true key ranked first of {n_candidates} (chance {1 / n_candidates:.0%})"
        ax.set_title("greedy exact match" if metric == "greedy" else ranked)
    axes[0].set_ylabel("depth of the key in the filler")
    fig.colorbar(image, ax=axes, label="accuracy", shrink=0.9)
    fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
