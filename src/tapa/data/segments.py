"""Fixed-length training segments cut from whole documents, and a resumable sampler.

A segment of length L holds L + 1 consecutive tokens of one document (inputs and shifted
targets); a document of n tokens (EOS included) gives floor((n - 1) / L) segments, so no
segment crosses a document boundary (the paper chunks its books into 8K segments).

The sampler visits segments in a fresh seeded permutation each epoch. Which segments a
step uses depends only on (seed, step), so resuming needs nothing but the step number,
and each rank of a distributed run takes its own slice of the same global batch.
"""

from __future__ import annotations

import numpy as np
import torch

from tapa.data.token_cache import TokenArray
from tapa.errors import ConfigError


class Segments:
    def __init__(self, array: TokenArray, seq_len: int, split: str = "train") -> None:
        if seq_len < 1:
            raise ConfigError(f"seq_len: must be a positive integer, got {seq_len}")
        self.array, self.seq_len = array, seq_len
        lengths = array.document_lengths()
        counts = np.maximum(lengths - 1, 0) // seq_len
        if counts.sum() == 0:
            longest = int(lengths.max()) if len(lengths) else 0
            raise ConfigError(
                f"seq_len: {seq_len} is longer than every {split} document (the longest has {longest - 1:,} tokens); "
                "use a shorter --seq-len or a corpus with longer documents"
            )
        self.starts = np.concatenate(
            [
                start + np.arange(n, dtype=np.int64) * seq_len
                for start, n in zip(array.offsets[:-1], counts, strict=True)
            ]
        )

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        return len(self) * self.seq_len

    def batch(self, indices: np.ndarray | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets, each (len(indices), seq_len), int64."""
        rows = self.starts[np.asarray(indices, dtype=np.int64)][:, None] + np.arange(self.seq_len + 1)
        block = torch.from_numpy(np.asarray(self.array.tokens[rows], dtype=np.int64))
        return block[:, :-1], block[:, 1:]

    def evenly_spaced(self, count: int) -> np.ndarray:
        """A fixed, spread-out subset of segment indices (for deterministic evaluation)."""
        if count >= len(self):
            return np.arange(len(self))
        return np.unique(np.linspace(0, len(self) - 1, count).round().astype(np.int64))


class Sampler:
    """Global batch ``step`` = positions [step * B, (step + 1) * B) of the epoch permutations."""

    def __init__(self, num_segments: int, global_batch: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = num_segments, global_batch, seed
        self._epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def global_batch(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        return np.array([self._permutation(int(p // self.n))[p % self.n] for p in positions], dtype=np.int64)

    def rank_batch(self, step: int, rank: int, world: int) -> np.ndarray:
        per_rank = self.batch_size // world
        return self.global_batch(step)[rank * per_rank : (rank + 1) * per_rank]

    def epoch(self, step: int) -> float:
        return step * self.batch_size / self.n
