"""Segment recall: a random segment, filler, then the same segment again.

A sequence of length L ends with a *query copy*: ``segment`` distinct tokens drawn from an
alphabet of ``n_tokens``. The same segment appeared once before, starting at some position
of the ``L - segment`` tokens of filler before the query copy (the *context*). The model is
scored on tokens 2..segment of the query copy: to predict token j + 1 it must find the
current token j's earlier occurrence, up to ``L - segment`` tokens back, and copy the token
after it. Every token of the segment is a key and its successor the value (an induction /
associative-recall circuit with ``segment - 1`` lookups per sequence). Depth = the first
copy's start divided by the last possible start (0 = the context's first token, 1 = right
before the query copy); in training the start is uniform, so the gap between the two
copies is anything from 0 to ``L0 - 2 * segment`` tokens, and a fixed relative offset
cannot solve the task.

Vocabulary: segment alphabet ``[0, n_tokens)``, filler ``[n_tokens, n_tokens + n_filler)``;
the two are disjoint and tokens are distinct within a segment, so each lookup has exactly
one answer and the chance level (prediction restricted to the alphabet) is 1/n_tokens.
The batch has the fields of :class:`tapa.evaluate.recall.RecallBatch`, so
:func:`tapa.evaluate.recall.score` scores it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tapa.evaluate.recall import RecallBatch


@dataclass(frozen=True)
class SegmentTask:
    n_tokens: int = 64
    n_filler: int = 16
    segment: int = 8
    kind: str = "segment"  # tells the study (and its stage keys) which task this is

    @property
    def vocab_size(self) -> int:
        return self.n_tokens + self.n_filler

    @property
    def value_ids(self) -> range:
        return range(0, self.n_tokens)

    @property
    def n_queries(self) -> int:
        return self.segment - 1

    def min_length(self) -> int:
        return 2 * self.segment

    def training_batch(self, batch: int, length: int, generator: torch.Generator) -> RecallBatch:
        return make_segment_batch(self, batch, length, generator)

    def evaluation_batch(self, batch: int, length: int, generator: torch.Generator) -> RecallBatch:
        """First copies spread over every depth (:func:`stratified_segment_depths`)."""
        return make_segment_batch(
            self, batch, length, generator, stratified_segment_depths(batch, length, self, generator)
        )


def make_segment_batch(
    task: SegmentTask, batch: int, length: int, generator: torch.Generator, depths: torch.Tensor | None = None
) -> RecallBatch:
    """``batch`` sequences of ``length`` tokens; the query copy is the last ``segment``
    tokens, the first copy starts at ``round(depth * last)`` with ``last = length - 2 *
    segment`` (``depths`` (B,) in [0, 1]; uniform starts without it). Query j (0-based)
    sits at ``length - segment + j`` and predicts segment token j + 1; its key (the
    earlier occurrence of token j) at ``start + j``. Reported depth = start / last
    (0 when last = 0)."""
    if length < task.min_length():
        raise ValueError(f"length {length} is below the task's minimum {task.min_length()}")
    if task.segment > task.n_tokens:
        raise ValueError("need segment <= n_tokens (tokens are distinct within a segment)")
    seg, last = task.segment, length - 2 * task.segment
    context = length - seg
    ids = torch.randint(task.n_tokens, task.n_tokens + task.n_filler, (batch, length), generator=generator)
    targets = torch.full((batch, length), -100, dtype=torch.long)
    if depths is None:
        starts = torch.randint(0, last + 1, (batch,), generator=generator)
    else:
        starts = (depths.reshape(batch).double() * last).round().long()
        if starts.min() < 0 or starts.max() > last:
            raise ValueError("depths must lie in [0, 1]")
    j = torch.arange(seg - 1)
    for b in range(batch):
        tokens = torch.randperm(task.n_tokens, generator=generator)[:seg]
        s = int(starts[b])
        ids[b, s : s + seg] = tokens
        ids[b, context:] = tokens
        targets[b, context : length - 1] = tokens[1:]
    key_pos = starts[:, None] + j
    depth = starts.double() / last if last else torch.zeros(batch, dtype=torch.float64)
    return RecallBatch(
        ids,
        targets,
        key_pos,
        depth[:, None].expand(batch, seg - 1).clone(),
        (context + j).expand(batch, seg - 1).clone(),
    )


def stratified_segment_depths(batch: int, length: int, task: SegmentTask, generator: torch.Generator) -> torch.Tensor:
    """(B,) depths for evaluation: the starts 0..last split into ``batch`` strata (as even
    as integers allow, shuffled), each sequence's start uniform in its stratum, so every
    depth is covered. Exact: depth * last is a whole start."""
    last = length - 2 * task.segment
    if last == 0:
        return torch.zeros(batch, dtype=torch.float64)
    edges = [round(i * (last + 1) / batch) for i in range(batch + 1)]
    out = torch.empty(batch, dtype=torch.float64)
    for row, i in enumerate(torch.randperm(batch, generator=generator).tolist()):
        lo = min(edges[i], last)  # more sequences than starts: some strata are one start wide
        hi = max(lo, min(edges[i + 1] - 1, last))
        out[row] = int(torch.randint(lo, hi + 1, (1,), generator=generator)) / last
    return out
