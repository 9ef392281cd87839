"""Tokenize a corpus split once and keep it on disk as a flat memory-mapped array.

Every document is followed by the tokenizer's EOS id. The cache is keyed by the split's
content fingerprint and the tokenizer's fingerprint (not by segment length: segments of
any length are views of the same array), so re-runs never re-tokenize. Files are written
to a temporary name and renamed; the metadata file is written last and marks the entry
complete, so an interrupted run leaves no half-valid cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tapa.data.sources import Corpus
from tapa.data.tokenizer import Bytes, HFTokenizer, Tokenizer
from tapa.utils.files import atomic_write_bytes, cache_root

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return cache_root() / "tokens"


@dataclass
class TokenArray:
    """``tokens[offsets[i]:offsets[i + 1]]`` is document ``i`` followed by EOS."""

    tokens: np.ndarray
    offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.offsets) - 1

    def document_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def tokenize_documents(documents: Sequence[str], tokenizer: Tokenizer) -> TokenArray:
    """Fresh tokenization (no cache): the reference the cache must equal."""
    if isinstance(tokenizer, Bytes):
        encoded = [np.frombuffer(doc.encode("utf-8"), dtype=np.uint8) for doc in documents]
    elif isinstance(tokenizer, HFTokenizer):
        encoded = [np.asarray(ids) for ids in tokenizer.encode_batch(documents)]
    else:
        encoded = [np.asarray(tokenizer.encode(doc)) for doc in documents]
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    parts = [piece for ids in encoded for piece in (ids.astype(dtype), eos)]
    lengths = np.array([len(ids) + 1 for ids in encoded], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenArray(np.concatenate(parts) if parts else np.zeros(0, dtype), offsets)


def cache_key(corpus: Corpus, split: str, tokenizer: Tokenizer) -> str:
    text = f"v{CACHE_VERSION}|{corpus.fingerprint(split)}|{tokenizer.fingerprint()}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _load(bin_path: Path, meta_path: Path) -> TokenArray | None:
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        if bin_path.stat().st_size != meta["num_tokens"] * dtype.itemsize:
            return None
        offsets = np.asarray(meta["offsets"], dtype=np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if meta["num_tokens"] == 0:
        return TokenArray(np.zeros(0, dtype), offsets)
    return TokenArray(np.memmap(bin_path, dtype=dtype, mode="r"), offsets)


def cached_tokens(
    corpus: Corpus, split: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None, verbose: bool = False
) -> TokenArray:
    """The split's tokens from the cache, tokenizing (and caching) them on a miss."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(corpus, split, tokenizer)
    bin_path, meta_path = root / f"{key}.bin", root / f"{key}.json"
    if meta_path.is_file() and (hit := _load(bin_path, meta_path)) is not None:
        return hit
    array = tokenize_documents(corpus.documents(split), tokenizer)
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(bin_path, array.tokens.tobytes())
        meta = {
            "corpus": corpus.name,
            "split": split,
            "tokenizer": tokenizer.fingerprint(),
            "dtype": array.tokens.dtype.str,
            "num_tokens": int(array.tokens.size),
            "offsets": array.offsets.tolist(),
        }
        atomic_write_bytes(meta_path, json.dumps(meta).encode())
    except OSError as err:  # a read-only cache is not fatal: use the fresh array
        if verbose:
            print(f"warning: could not write the token cache in {root} ({err.strerror}); continuing without it")
        return array
    if verbose:
        print(f"tokenized {corpus.name}/{split}: {array.tokens.size:,} tokens, cached in {bin_path}")
    return _load(bin_path, meta_path) or array
