"""Where documents come from: the embedded books, a user's files, or a `datasets` dataset.

A *source* is a string:

- ``"books"``: the default corpus with its fixed whole-book splits (see :mod:`tapa.data.corpus`);
- a path to a ``.txt``/``.md`` file (one document), a ``.jsonl`` file (one document per line,
  read from ``text_field``), or a directory (every ``.txt``/``.md``/``.jsonl`` file under it,
  in sorted order);
- ``"hf:NAME"`` or ``"hf:NAME:CONFIG"``: a Hugging Face dataset, if ``datasets`` is installed
  and the dataset is already in its local cache (no network is ever required).

User corpora are split by whole documents: with no separate validation source, every tenth
document (the 10th, 20th, ...; the last one if there are fewer than ten) goes to validation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tapa.data.corpus import SPLITS, load_split
from tapa.errors import ConfigError

TEXT_SUFFIXES = (".txt", ".md")
SOURCE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl")
VALIDATION_EVERY = 10


@dataclass(frozen=True)
class Corpus:
    """Documents per split, and a content fingerprint per split (for the token cache)."""

    name: str
    splits: dict[str, list[str]]

    def documents(self, split: str) -> list[str]:
        docs = self.splits.get(split)
        if not docs:
            have = ", ".join(s for s, d in self.splits.items() if d)
            raise ConfigError(f"corpus {self.name}: no {split!r} split (it has: {have})")
        return docs

    def fingerprint(self, split: str) -> str:
        digest = hashlib.sha256()
        for doc in self.documents(split):
            data = doc.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()


def iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """The ``text_field`` of each non-blank line of a JSONL file, read line by line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(
                    f"corpus: {path}:{number} is not valid JSON ({err.msg}); fix or remove that line"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise ConfigError(f"corpus: {path}:{number} has no string field {text_field!r}; pass --text-field NAME")
            yield record[text_field]


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    return list(iter_jsonl(path, text_field))


def _read_file(path: Path, text_field: str) -> list[str]:
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path, text_field)
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise ConfigError(f"corpus: {path} is not UTF-8 text; convert it or remove it from the corpus") from None


def source_files(path: Path, alternatives: str = "'books'") -> list[Path]:
    """The corpus files of a file or directory source, in a fixed (sorted) order."""
    if not path.exists():
        raise ConfigError(f"corpus: {path} does not exist; pass a .txt/.md/.jsonl file, a directory, or {alternatives}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
        if not files:
            raise ConfigError(f"corpus: {path} holds no .txt, .md or .jsonl files")
        return files
    if path.suffix not in SOURCE_SUFFIXES:
        raise ConfigError(f"corpus: {path} has suffix {path.suffix!r}; expected one of {', '.join(SOURCE_SUFFIXES)}")
    return [path]


def read_documents(source: str | Path, text_field: str = "text") -> list[str]:
    """All non-empty documents of a file or directory, in a fixed (sorted) order."""
    path = Path(source).expanduser()
    files = source_files(path)
    docs = [doc for file in files for doc in _read_file(file, text_field) if doc.strip()]
    if not docs:
        raise ConfigError(f"corpus: {path} is empty (no non-blank document in {len(files)} file(s))")
    return docs


def load_hf_dataset(spec: str, streaming: bool = False):
    """(name, the ``datasets`` splits) of ``hf:NAME[:CONFIG]``; one-line errors when the
    package is missing or the dataset cannot be loaded (from its local cache, or streamed)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"corpus: {spec!r} needs the `datasets` package; pip install 'tapa[datasets]'") from None
    name, _, config = spec.removeprefix("hf:").partition(":")
    try:
        return name, datasets.load_dataset(name, config or None, **({"streaming": True} if streaming else {}))
    except Exception as err:  # datasets raises many types; all mean "not available here"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "" if streaming else "; download it into the cache first"
        raise ConfigError(f"corpus: cannot load dataset {name!r} ({reason}){hint}") from None


def _read_hf(spec: str, text_field: str) -> dict[str, list[str]]:
    name, loaded = load_hf_dataset(spec)
    splits = {}
    for split, rows in loaded.items():
        if text_field not in rows.column_names:
            raise ConfigError(f"corpus: dataset {name!r} has no column {text_field!r}; pass --text-field NAME")
        splits[split] = [t for t in rows[text_field] if isinstance(t, str) and t.strip()]
    return splits


def _split_documents(docs: list[str], where: str) -> dict[str, list[str]]:
    if len(docs) < 2:
        raise ConfigError(
            f"corpus: {where} holds a single document, which cannot be split by document; "
            "pass --val-data FILE or a directory of several files"
        )
    val_idx = set(range(VALIDATION_EVERY - 1, len(docs), VALIDATION_EVERY)) or {len(docs) - 1}
    return {
        "train": [d for i, d in enumerate(docs) if i not in val_idx],
        "validation": [d for i, d in enumerate(docs) if i in val_idx],
    }


def load_corpus(
    source: str = "books", validation: str | None = None, text_field: str = "text", whole_if_single: bool = False
) -> Corpus:
    """Resolve a source string (and optional separate validation source) into split documents.

    ``whole_if_single``: a file corpus of one document, which cannot be split by document,
    becomes every split (what an evaluation of one text file wants) instead of an error."""
    if source == "books":
        if validation is not None:
            raise ConfigError("corpus: 'books' has fixed splits; --val-data applies to your own corpus only")
        return Corpus("books", {split: load_split(split) for split in SPLITS})
    if source.startswith("hf:"):
        splits = _read_hf(source, text_field)
        if "validation" not in splits and validation is None:
            splits = {**splits, **_split_documents(splits.get("train", []), source)}
    else:
        docs = read_documents(source, text_field)
        if validation is not None:
            splits = {"train": docs}
        elif whole_if_single and len(docs) < 2:
            splits = {"train": docs, "validation": docs, "test": docs}
        else:
            splits = _split_documents(docs, source)
    if validation is not None:
        splits["validation"] = read_documents(validation, text_field)
    return Corpus(source, splits)
