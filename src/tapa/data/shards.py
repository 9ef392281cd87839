"""Streaming token shards: ``tapa tokenize CORPUS --out DIR`` and their memory-mapped reader.

Layout of DIR::

    index.json                   what is where (below), written last
    tokenizer.json | byte config the tokenizer that made the shards
    train-00000.bin ...          raw token ids, uint16 (vocabulary <= 65536) or uint32
    train.offsets.bin            int64 document boundaries: document i is tokens [o[i], o[i+1])
    validation-00000.bin ...     the same for the validation split

Every document is followed by the tokenizer's EOS id, as in the in-memory token cache, so
the segments a training run cuts (no segment crosses a document) and the batches it draws
are the same as from the in-memory path. Reading is streamed and writing is buffered, so
memory stays bounded by the chunk and shard buffers, whatever the corpus size:

- a ``.txt`` / ``.md`` file is one document, read in line-aligned chunks (``chunk_bytes``);
  a single file gets a token-level validation split: the text after the byte offset
  ``(1 - val_fraction) x size`` (moved to the next line end) is the validation document;
- a ``.jsonl`` file is one document per line (field ``text_field``);
- a directory holds ``.txt`` / ``.md`` / ``.jsonl`` files, read in sorted order;
- ``hf:NAME[:CONFIG]`` streams a Hugging Face dataset (``datasets``, ``streaming=True``).

Several documents are split by whole documents as in memory: every tenth document (the
10th, 20th, ...; the last one when there are fewer than ten) goes to validation (a
dataset with its own validation split keeps it). A document longer than ``chunk_bytes``
is tokenized chunk by chunk; with a BPE the tokens at a chunk boundary can differ from
tokenizing the whole document at once (byte tokens never do).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tapa.data.sources import TEXT_SUFFIXES, VALIDATION_EVERY, iter_jsonl, load_hf_dataset, source_files
from tapa.data.token_cache import TokenArray
from tapa.data.tokenizer import Bytes, Tokenizer
from tapa.errors import ConfigError
from tapa.utils.jsonfile import read_json_object

INDEX_FILE = "index.json"
INDEX_VERSION = 1
SPLITS = ("train", "validation")
DEFAULT_SHARD_TOKENS = 2**26  # 64M tokens: 128 MiB of uint16 per shard
DEFAULT_CHUNK_BYTES = 2**20


def is_shard_dir(path: str | Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


# -- streamed reading -------------------------------------------------------------------------
def _text_chunks(path: Path, chunk_bytes: int, start: int = 0, stop: int | None = None) -> Iterator[str]:
    """Line-aligned pieces of a UTF-8 file's bytes [start, stop), each about ``chunk_bytes``."""
    with path.open("rb") as handle:
        handle.seek(start)
        position, pending = start, b""
        while stop is None or position < stop:
            want = chunk_bytes if stop is None else min(chunk_bytes, stop - position)
            block = handle.read(want)
            if not block:
                break
            position += len(block)
            block, pending = pending + block, b""
            cut = block.rfind(b"\n") + 1
            if cut == 0 and len(block) < 4 * chunk_bytes:  # no line end yet: read on (bounded)
                pending = block
                continue
            if cut == 0:  # a very long line: cut before the last (maybe partial) UTF-8 character
                cut = len(block) - 1
                while cut > 0 and block[cut] & 0xC0 == 0x80:
                    cut -= 1
            piece, pending = block[:cut], block[cut:]
            yield _decode(piece, path)
        if pending:
            yield _decode(pending, path)


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"corpus: {path} is not UTF-8 text; convert it or remove it from the corpus") from None


def _line_end_after(path: Path, offset: int) -> int:
    """The byte offset just after the first line end at or after ``offset`` (the file size if none)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        while True:
            block = handle.read(2**16)
            if not block:
                return handle.tell()
            at = block.find(b"\n")
            if at >= 0:
                return offset + at + 1
            offset += len(block)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    return (text for text in iter_jsonl(path, text_field) if text.strip())


Document = Iterable[str]  # a document is a stream of text pieces


def _file_documents(path: Path, text_field: str, chunk_bytes: int) -> Iterator[Document]:
    if path.suffix == ".jsonl":
        for text in _jsonl_documents(path, text_field):
            yield (text,)
    elif path.stat().st_size and _has_text(path):
        yield _text_chunks(path, chunk_bytes)


def _has_text(path: Path) -> bool:
    """Not blank (the in-memory reader skips blank documents too); reads until the first non-space."""
    return any(piece.strip() for piece in _text_chunks(path, 2**16))


def _hf_splits(spec: str) -> dict[str, Iterable[Any]]:
    return dict(load_hf_dataset(spec, streaming=True)[1])


def _hf_texts(rows: Iterable[Any], text_field: str, name: str) -> Iterator[Document]:
    for row in rows:
        if text_field not in row:
            raise ConfigError(f"corpus: dataset {name!r} has no column {text_field!r}; pass --text-field NAME")
        text = row[text_field]
        if isinstance(text, str) and text.strip():
            yield (text,)


def split_streams(
    source: str, text_field: str = "text", val_fraction: float = 0.01, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[Iterator[tuple[str, Document]], str]:
    """(split, document) pairs in corpus order, and how validation was chosen."""
    if source.startswith("hf:"):
        splits = _hf_splits(source)
        if "train" not in splits:
            raise ConfigError(f"corpus: dataset {source!r} has no 'train' split (it has {', '.join(splits)})")
        if "validation" in splits:
            pairs = ((split, doc) for split in SPLITS for doc in _hf_texts(splits[split], text_field, source))
            return pairs, "the dataset's own validation split"
        docs = _hf_texts(splits["train"], text_field, source)
        every = (
            (("validation" if i % VALIDATION_EVERY == VALIDATION_EVERY - 1 else "train"), d) for i, d in enumerate(docs)
        )
        return every, f"every {VALIDATION_EVERY}th document of the train split"
    path = Path(source).expanduser()
    files = source_files(path, alternatives="hf:NAME")
    if len(files) == 1 and files[0].suffix in TEXT_SUFFIXES:
        return _token_level(files[0], val_fraction, chunk_bytes), f"token-level: the last {val_fraction:.2%} of bytes"
    count = sum(1 for f in files for _ in _file_documents(f, text_field, 2**16))
    if count == 0:
        raise ConfigError(f"corpus: {path} is empty (no non-blank document)")
    if count < 2:
        raise ConfigError(f"corpus: {path} holds a single document; pass a .txt file (token-level split) or more")
    val = set(range(VALIDATION_EVERY - 1, count, VALIDATION_EVERY)) or {count - 1}
    docs = (d for f in files for d in _file_documents(f, text_field, chunk_bytes))
    return ((("validation" if i in val else "train"), d) for i, d in enumerate(docs)), (
        f"every {VALIDATION_EVERY}th document (the last one when fewer than {VALIDATION_EVERY})"
    )


def _token_level(path: Path, val_fraction: float, chunk_bytes: int) -> Iterator[tuple[str, Document]]:
    """Checks the file now; the pairs are streamed later."""
    size = path.stat().st_size
    if not _has_text(path):
        raise ConfigError(f"corpus: {path} is empty (no non-blank text)")
    cut = _line_end_after(path, int(size * (1 - val_fraction)))
    if cut >= size:
        raise ConfigError(
            f"corpus: {path} has no line end in its last {val_fraction:.2%}; "
            "pass a larger --val-fraction or split it into files"
        )
    return iter(
        [("train", _text_chunks(path, chunk_bytes, 0, cut)), ("validation", _text_chunks(path, chunk_bytes, cut))]
    )


# -- writing ----------------------------------------------------------------------------------
def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def encode_piece(tokenizer: Tokenizer, text: str) -> np.ndarray:
    if isinstance(tokenizer, Bytes):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


class ShardWriter:
    """One split's token stream appended to fixed-size shard files (nothing is buffered
    beyond the piece being written), plus the document offsets."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.total = 0
        self.shards: list[dict[str, Any]] = []
        self.handle: Any = None
        self.in_shard = 0
        self.offsets = (folder / f"{split}.offsets.bin").open("wb")
        self.offsets.write(np.zeros(1, np.int64).tobytes())
        self.documents = 0

    def add(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype, copy=False)
        while len(ids):
            if self.handle is None:
                name = f"{self.split}-{len(self.shards):05d}.bin"
                self.handle, self.in_shard = (self.folder / name).open("wb"), 0
                self.shards.append({"file": name, "tokens": 0})
            take = min(len(ids), self.shard_tokens - self.in_shard)
            self.handle.write(ids[:take].tobytes())
            if take:  # the largest id, recorded so that a reader can verify the shard's range cheaply
                self.shards[-1]["max_id"] = max(self.shards[-1].get("max_id", 0), int(ids[:take].max()))
            ids, self.in_shard, self.total = ids[take:], self.in_shard + take, self.total + take
            self.shards[-1]["tokens"] = self.in_shard
            if self.in_shard == self.shard_tokens:
                self.handle.close()
                self.handle = None

    def end_document(self, eos: int) -> None:
        self.add(np.array([eos], dtype=self.dtype))
        self.offsets.write(np.array([self.total], np.int64).tobytes())
        self.documents += 1

    def close(self) -> dict[str, Any]:
        if self.handle is not None:
            self.handle.close()
        self.offsets.close()
        return {
            "tokens": self.total,
            "documents": self.documents,
            "shards": self.shards,
            "offsets": f"{self.split}.offsets.bin",
        }


def write_shards(
    pairs: Iterable[tuple[str, Document]],
    tokenizer: Tokenizer,
    folder: Path,
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Tokenize the (split, document) stream into ``folder``; returns the index (also written)."""
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: ShardWriter(folder, split, dtype, shard_tokens) for split in SPLITS}
    for split, document in pairs:
        writer = writers[split]
        for piece in document:
            writer.add(encode_piece(tokenizer, piece))
        writer.end_document(tokenizer.eos_id)
    splits = {split: w.close() for split, w in writers.items()}
    for split, info in splits.items():
        if info["documents"] == 0:
            raise ConfigError(f"corpus: the corpus gave no {split} document; add documents or pass --val-fraction")
    tokenizer.save(folder)
    index = {
        "version": INDEX_VERSION,
        "dtype": dtype.str,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "tokenizer": tokenizer.fingerprint(),
        "splits": splits,
        **(meta or {}),
    }
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
    return index


def tokenize_corpus(
    source: str,
    out: str | Path,
    tokenizer: Tokenizer,
    *,
    text_field: str = "text",
    val_fraction: float = 0.01,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """``tapa tokenize``: check, stream, write into a staging folder, move into ``out``."""
    from tapa.utils.publish import check_empty_out, publish

    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise ConfigError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    out = Path(out)
    check_empty_out(out)
    pairs, rule = split_streams(source, text_field, val_fraction, chunk_bytes)  # checks the source first
    result: dict[str, Any] = {}

    def write(staging: Path) -> None:
        result.update(
            write_shards(
                pairs, tokenizer, staging, shard_tokens=shard_tokens, meta={"source": source, "validation_rule": rule}
            )
        )

    publish(out, write)
    return result


# -- reading ----------------------------------------------------------------------------------
class ShardedTokens:
    """Memory-mapped shards read as one flat token array (integer and fancy indexing)."""

    def __init__(self, maps: list[np.ndarray], dtype: np.dtype) -> None:
        self.maps, self.dtype = maps, dtype
        sizes = np.array([len(m) for m in maps], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.size = int(self.starts[-1])

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: Any) -> np.ndarray:
        positions = np.asarray(index, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.size):
            raise IndexError(f"token position out of range [0, {self.size})")
        shard = np.searchsorted(self.starts, positions, side="right") - 1
        out = np.empty(positions.shape, dtype=self.dtype)
        for s in np.unique(shard):
            mask = shard == s
            out[mask] = self.maps[s][positions[mask] - self.starts[s]]
        return out


def read_index(folder: str | Path) -> dict[str, Any]:
    """The index of a shard folder, its structure checked (a corrupt index is one clean error)."""
    folder = Path(folder)
    try:
        index = read_json_object(folder / INDEX_FILE, "shards")
    except ConfigError as err:
        raise ConfigError(f"{err}; re-run tapa tokenize") from None
    if index.get("version") != INDEX_VERSION:
        raise ConfigError(f"shards: {folder} has index version {index.get('version')}, not {INDEX_VERSION}; re-run")
    problem = _index_problem(index)
    if problem:
        raise ConfigError(f"shards: {folder / INDEX_FILE} is corrupt ({problem}); re-run tapa tokenize")
    return index


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _index_problem(index: dict[str, Any]) -> str | None:
    """What is wrong with an index's structure, or None."""
    try:
        dtype = np.dtype(index.get("dtype"))
    except TypeError:
        return f"dtype {index.get('dtype')!r} is not a numpy dtype"
    if dtype.kind not in "ui":
        return f"dtype {dtype} is not an integer type"
    for key in ("vocab_size", "eos_id"):
        if not _count(index.get(key)):
            return f"{key} {index.get(key)!r} is not a non-negative integer"
    splits = index.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "splits is missing or not an object"
    for split, info in splits.items():
        if not isinstance(info, dict):
            return f"split {split!r} is not an object"
        for key in ("tokens", "documents"):
            if not _count(info.get(key)):
                return f"split {split!r}: {key} {info.get(key)!r} is not a non-negative integer"
        if not isinstance(info.get("offsets"), str) or not isinstance(info.get("shards"), list):
            return f"split {split!r}: offsets or shards missing"
        for shard in info["shards"]:
            if not isinstance(shard, dict) or not isinstance(shard.get("file"), str) or not _count(shard.get("tokens")):
                return f"split {split!r}: a shard entry {shard!r} lacks its file or token count"
            if "/" in shard["file"] or shard["file"].startswith("."):
                return f"split {split!r}: shard file {shard['file']!r} is not a plain name"
    return None


def check_id_range(path: Path, tokens: np.ndarray, vocab_size: int, recorded: int | None) -> None:
    """Every id of a shard below ``vocab_size`` (one max over the memory map), and equal to the
    largest id recorded at tokenize time when there is one."""
    if not len(tokens):
        return
    largest = int(tokens.max())
    if largest >= vocab_size:
        first = int(np.argmax(tokens >= vocab_size))
        raise ConfigError(
            f"shards: {path} holds token id {int(tokens[first])} at position {first}, outside the "
            f"vocabulary of {vocab_size}; re-run tapa tokenize"
        )
    if recorded is not None and recorded != largest:
        raise ConfigError(
            f"shards: {path} changed since tapa tokenize (largest id {largest}, recorded {recorded}); "
            "re-run tapa tokenize"
        )


def load_shards(folder: str | Path) -> tuple[Tokenizer, dict[str, TokenArray]]:
    """The shards' tokenizer and each split as a memory-mapped :class:`TokenArray`."""
    from tapa.data.tokenizer import load_checkpoint_tokenizer

    folder = Path(folder)
    index = read_index(folder)
    dtype = np.dtype(index["dtype"])
    arrays = {}
    for split, info in index["splits"].items():
        maps = []
        for shard in info["shards"]:
            path = folder / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise ConfigError(f"shards: {path} is missing or truncated; re-run tapa tokenize")
            tokens = np.memmap(path, dtype=dtype, mode="r") if shard["tokens"] else np.zeros(0, dtype)
            check_id_range(path, tokens, index["vocab_size"], shard.get("max_id"))
            maps.append(tokens)
        offsets = np.fromfile(folder / info["offsets"], dtype=np.int64)
        if len(offsets) != info["documents"] + 1 or offsets[-1] != info["tokens"]:
            raise ConfigError(f"shards: {folder / info['offsets']} does not match the index; re-run tapa tokenize")
        arrays[split] = TokenArray(ShardedTokens(maps, dtype), offsets)  # type: ignore[arg-type]
    tokenizer = load_checkpoint_tokenizer(folder)
    if tokenizer.vocab_size != index["vocab_size"]:
        raise ConfigError(
            f"shards: the index's vocabulary {index['vocab_size']} is not its tokenizer's "
            f"{tokenizer.vocab_size}; re-run tapa tokenize"
        )
    if tokenizer.fingerprint() != index.get("tokenizer"):
        raise ConfigError(f"shards: the tokenizer in {folder} is not the one that made its shards; re-run")
    return tokenizer, arrays
