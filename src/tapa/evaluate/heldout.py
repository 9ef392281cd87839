"""The held-out documents an evaluation reads: a split of the default books (the test book,
Persuasion, by default) or of a user corpus, tokenized with the checkpoint's tokenizer,
in a fixed order and cut to a fixed token budget so every number is reproducible."""

from __future__ import annotations

from pathlib import Path

import torch

from tapa.data.sources import load_corpus
from tapa.data.token_cache import cached_tokens
from tapa.data.tokenizer import Tokenizer


def heldout_documents(
    tokenizer: Tokenizer,
    data: str = "books",
    split: str = "test",
    max_tokens: int | None = None,
    cache_dir: str | Path | None = None,
    val_data: str | None = None,
) -> list[torch.Tensor]:
    """Documents of ``split`` as int64 tensors, the first ``max_tokens`` tokens in total.

    A corpus of one document (a single text file) cannot be split by document; for an
    evaluation that document is the held-out text, whatever the split."""
    corpus = load_corpus(data, val_data, whole_if_single=True)
    array = cached_tokens(corpus, split, tokenizer, cache_dir)
    docs, left = [], max_tokens if max_tokens is not None else float("inf")
    for i in range(array.num_documents):
        if left < 2:
            break
        lo, hi = int(array.offsets[i]), int(array.offsets[i + 1])
        hi = min(hi, lo + int(min(left, hi - lo)))
        docs.append(torch.from_numpy(array.tokens[lo:hi].astype("int64")))
        left -= hi - lo
    return docs
