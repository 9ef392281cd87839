"""Associative recall past the training length: a synthetic retrieval task.

A sequence of length L is a *context* of ``L - 2 * n_queries`` tokens followed by a *query
block*. The context is filler (random tokens from a filler alphabet) with ``n_pairs``
key-value bigrams ``k v`` planted in it; keys are distinct within a sequence. The query
block repeats ``n_queries`` of the planted keys, each followed by its value: ``q_1 v_1 q_2
v_2 ...``. The model is scored on the value tokens of the query block: it must find the
key's earlier occurrence, possibly ``L`` tokens back, and copy the token after it (an
induction / associative-recall circuit). Depth of a queried pair = its key's position in
the context divided by the context length (0 = first token, 1 = last).

Vocabulary: 0 = separator (starts the query block), keys ``[1, 1+K)``, values
``[1+K, 1+K+V)``, filler ``[1+K+V, 1+K+V+F)``. Keys, values and filler are disjoint, so a
planted pair cannot be confused with filler and the chance level is exactly 1/V.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RecallTask:
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 64
    n_pairs: int = 8
    n_queries: int = 4
    # training only (no ``depths``): queries drawn with replacement from the planted pairs,
    # so "name a value not yet answered" stops being a shortcut (it scores 52% with 4 of 4)
    repeat_queries: bool = False

    @property
    def vocab_size(self) -> int:
        return 1 + self.n_keys + self.n_values + self.n_filler

    @property
    def value_ids(self) -> range:
        return range(1 + self.n_keys, 1 + self.n_keys + self.n_values)

    def min_length(self) -> int:
        return 2 * self.n_pairs + 2 * self.n_queries + 1

    def training_batch(self, batch: int, length: int, generator: torch.Generator) -> RecallBatch:
        return make_batch(self, batch, length, generator)

    def evaluation_batch(self, batch: int, length: int, generator: torch.Generator) -> RecallBatch:
        """Queried pairs spread over every depth (:func:`stratified_depths`)."""
        return make_batch(
            self, batch, length, generator, stratified_depths(batch, self.n_queries, length, self, generator)
        )


@dataclass
class RecallBatch:
    ids: torch.Tensor  # (B, L) token ids
    targets: torch.Tensor  # (B, L) next-token targets, -100 except at the query values' predictions
    key_positions: torch.Tensor  # (B, n_queries) where each queried key sits in the context
    depths: torch.Tensor  # (B, n_queries) key_positions / (context length - 1)
    query_positions: torch.Tensor  # (B, n_queries) index whose logits predict each value


def make_batch(
    task: RecallTask, batch: int, length: int, generator: torch.Generator, depths: torch.Tensor | None = None
) -> RecallBatch:
    """``batch`` sequences of ``length`` tokens.

    The context is ``length - 2 * n_queries`` tokens; its last one is the separator, so a
    pair ``k v`` may start at 0 .. ``last = context - 3``. ``depths`` (B, n_queries) in
    [0, 1] puts the j-th queried key at exactly ``round(depth * last)`` (requested pairs
    must not overlap); the other pairs, and every pair without ``depths``, take random free
    slots. Reported depth = key position / ``last``.
    """
    if length < task.min_length():
        raise ValueError(f"length {length} is below the task's minimum {task.min_length()}")
    if task.n_pairs > task.n_keys:
        raise ValueError("need n_pairs <= n_keys")
    if task.n_queries > task.n_pairs and (depths is not None or not task.repeat_queries):
        raise ValueError("need n_queries <= n_pairs (or repeat_queries, for training batches)")
    context = length - 2 * task.n_queries
    last = context - 3
    first_value = 1 + task.n_keys
    first_filler = first_value + task.n_values
    ids = torch.randint(first_filler, first_filler + task.n_filler, (batch, length), generator=generator)
    targets = torch.full((batch, length), -100, dtype=torch.long)
    key_pos = torch.empty(batch, task.n_queries, dtype=torch.long)
    query_pos = torch.empty(batch, task.n_queries, dtype=torch.long)
    for b in range(batch):
        keys = 1 + torch.randperm(task.n_keys, generator=generator)[: task.n_pairs]
        values = first_value + torch.randint(0, task.n_values, (task.n_pairs,), generator=generator)
        taken = torch.zeros(context - 1, dtype=torch.bool)
        starts = []
        for p in range(task.n_pairs):
            if depths is not None and p < task.n_queries:
                start = round(float(depths[b, p]) * last)
                if taken[start] or taken[start + 1]:
                    raise ValueError(f"depths {depths[b].tolist()} put two pairs on the same tokens at length {length}")
            else:
                start = _free_slot(taken, last, generator)
            taken[start] = taken[start + 1] = True
            starts.append(start)
            ids[b, start], ids[b, start + 1] = keys[p], values[p]
        # with depths, the queries are the placed pairs in order; without, a random subset
        # (or, with repeat_queries, pairs drawn with replacement)
        if depths is not None:
            order = range(task.n_queries)
        elif task.repeat_queries:
            order = torch.randint(0, task.n_pairs, (task.n_queries,), generator=generator)
        else:
            order = torch.randperm(task.n_pairs, generator=generator)
        ids[b, context - 1] = 0
        for j in range(task.n_queries):
            p = int(order[j])
            at = context + 2 * j
            ids[b, at], ids[b, at + 1] = keys[p], values[p]
            targets[b, at] = values[p]
            key_pos[b, j], query_pos[b, j] = starts[p], at
    return RecallBatch(ids, targets, key_pos, key_pos.double() / last, query_pos)


def stratified_depths(
    batch: int, n_queries: int, length: int, task: RecallTask, generator: torch.Generator
) -> torch.Tensor:
    """Depths for evaluation at ``length``: the starts 0..last split into ``n_queries``
    strata (shuffled); query j starts uniformly in its stratum, leaving the stratum's last
    slot free, so every depth is covered and the requested pairs never overlap. Each depth
    is start / last exactly (``make_batch`` puts the key at ``round(depth * last)`` = start)."""
    last = length - 2 * task.n_queries - 3
    edges = [round(j * (last + 1) / n_queries) for j in range(n_queries + 1)]
    if min(hi - lo for lo, hi in itertools.pairwise(edges)) < 2:
        raise ValueError(f"length {length} is too short to spread {n_queries} pairs over the context")
    out = torch.empty(batch, n_queries, dtype=torch.float64)
    for b in range(batch):
        strata = torch.randperm(n_queries, generator=generator)
        for j in range(n_queries):
            lo, hi = edges[int(strata[j])], edges[int(strata[j]) + 1] - 2  # a pair takes start and start + 1
            out[b, j] = int(torch.randint(lo, hi + 1, (1,), generator=generator)) / last
    return out


def _free_slot(taken: torch.Tensor, last: int, generator: torch.Generator) -> int:
    """A random start s in [0, last] with s and s + 1 free."""
    while True:
        s = int(torch.randint(0, last + 1, (1,), generator=generator))
        if not taken[s] and not taken[s + 1]:
            return s


@dataclass
class RecallScore:
    accuracy: float  # argmax over the value tokens equals the planted value
    probability: float  # mean probability the model gives the planted value (within the value tokens)
    correct: torch.Tensor  # (B, n_queries) bool


def score(model: Callable[[torch.Tensor], torch.Tensor], task: RecallTask, batch: RecallBatch) -> RecallScore:
    """Accuracy on the query values, the prediction restricted to the value tokens
    (a model that spreads its mass uniformly over them scores probability exactly 1/V)."""
    logits = model(batch.ids)
    rows = torch.arange(batch.ids.shape[0])[:, None]
    picked = logits[rows, batch.query_positions][..., task.value_ids.start : task.value_ids.stop].double()
    target = batch.targets[rows, batch.query_positions] - task.value_ids.start
    probs = picked.softmax(-1)
    correct = picked.argmax(-1) == target
    return RecallScore(correct.double().mean().item(), probs.gather(-1, target[..., None]).mean().item(), correct)
