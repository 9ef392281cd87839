"""Tokenizers behind one small interface: byte-level (default), BPE trained with Hugging Face
``tokenizers``, an existing ``tokenizer.json``, or a SentencePiece ``.model``.

A tokenizer is saved beside a checkpoint (``tokenizer.json``, ``tokenizer.model`` or, for
bytes, ``tokenizer_config.json``) and :func:`load_checkpoint_tokenizer` finds it again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from tapa.data.byte_tokenizer import ByteTokenizer
from tapa.errors import ConfigError

SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
BYTE_CONFIG = "tokenizer_config.json"
HF_FILE = "tokenizer.json"
SP_FILE = "tokenizer.model"
EOS_NAMES = (SPECIALS[1], "</s>", "<|endoftext|>", "<eos>")


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int] | torch.Tensor) -> str: ...
    def save(self, directory: Path) -> None: ...
    def fingerprint(self) -> str: ...


def _ids(ids: Sequence[int] | torch.Tensor) -> list[int]:
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


class Bytes(ByteTokenizer):
    """The byte tokenizer with save/fingerprint (256 byte values + BOS, EOS, PAD)."""

    name = "byte"

    def save(self, directory: Path) -> None:
        (Path(directory) / BYTE_CONFIG).write_text(json.dumps({"type": "byte", "vocab_size": self.vocab_size}) + "\n")

    def fingerprint(self) -> str:
        return "byte-v1"


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (BPE trained here, or any ``tokenizer.json``)."""

    name = "hf"

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        eos = next((i for t in EOS_NAMES if (i := tokenizer.token_to_id(t)) is not None), None)
        if eos is None:  # a tokenizer.json without an end-of-text token: add ours
            tokenizer.add_special_tokens([SPECIALS[1]])
            self.vocab_size = tokenizer.get_vocab_size()
            eos = tokenizer.token_to_id(SPECIALS[1])
        self.eos_id = eos

    @classmethod
    def train_bpe(cls, documents: Sequence[str], vocab_size: int) -> HFTokenizer:
        """Byte-level BPE (GPT-2 style pre-tokenization), so any text round-trips exactly."""
        from tokenizers import Tokenizer as _Tok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 256 + len(SPECIALS):
            raise ConfigError(f"bpe vocab size: {vocab_size} is below 259 (256 bytes + 3 specials); use 512 or more")
        tok = _Tok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(documents, trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: Path) -> HFTokenizer:
        from tokenizers import Tokenizer as _Tok

        try:
            return cls(_Tok.from_file(str(path)))
        except Exception as err:  # tokenizers raises a plain Exception for bad JSON
            raise ConfigError(f"tokenizer: {path} is not a valid tokenizer.json ({str(err)[:80]})") from None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; special tokens (<|im_end|>, ...) are dropped unless asked for,
        which is how transformers prints them with ``skip_special_tokens=False``."""
        return self.tok.decode(_ids(ids), skip_special_tokens=skip_special_tokens)

    def save(self, directory: Path) -> None:
        self.tok.save(str(Path(directory) / HF_FILE))

    def fingerprint(self) -> str:
        return "hf-" + hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:32]


class SentencePieceTokenizer:
    """A SentencePiece model loaded from a ``.model`` file (needs ``sentencepiece``)."""

    name = "sentencepiece"

    def __init__(self, path: Path) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise ConfigError(
                "tokenizer: a .model file needs the `sentencepiece` package; pip install sentencepiece"
            ) from None
        self.path = Path(path)
        self.blob = self.path.read_bytes()
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.blob)
        except Exception as err:  # RuntimeError from the C++ parser
            raise ConfigError(f"tokenizer: {path} is not a SentencePiece model ({str(err)[:80]})") from None
        self.vocab_size = self.sp.get_piece_size()
        self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return self.sp.decode(_ids(ids))

    def save(self, directory: Path) -> None:
        (Path(directory) / SP_FILE).write_bytes(self.blob)

    def fingerprint(self) -> str:
        return "sp-" + hashlib.sha256(self.blob).hexdigest()[:32]


def load_tokenizer_file(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json`` (Hugging Face) or a ``.model`` (SentencePiece) by path."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_checkpoint_tokenizer(path)
    if not path.is_file():
        raise ConfigError(f"tokenizer: {path} does not exist; pass 'byte', 'bpe', a tokenizer.json or a .model file")
    if path.suffix == ".json":
        return HFTokenizer.from_file(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    raise ConfigError(f"tokenizer: {path} is neither a tokenizer.json nor a SentencePiece .model")


def build_tokenizer(spec: str, train_documents: Sequence[str] = (), bpe_vocab_size: int = 4096) -> Tokenizer:
    """``"byte"``, ``"bpe"`` (trained on ``train_documents``) or a path to a tokenizer file."""
    if spec == "byte":
        return Bytes()
    if spec == "bpe":
        return HFTokenizer.train_bpe(train_documents, bpe_vocab_size)
    return load_tokenizer_file(spec)


def load_checkpoint_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved beside a checkpoint; byte-level when none was saved."""
    directory = Path(directory)
    if (directory / HF_FILE).is_file():
        return HFTokenizer.from_file(directory / HF_FILE)
    if (directory / SP_FILE).is_file():
        return SentencePieceTokenizer(directory / SP_FILE)
    return Bytes()


# a model's generation settings travel with its tokenizer (tapa.model.generation's files)
GENERATION_FILES = ("generation_config.json", "chat_template.jinja")


def copy_tokenizer_files(source: Path, destination: Path) -> None:
    for name in (HF_FILE, SP_FILE, BYTE_CONFIG, *GENERATION_FILES):
        if (source / name).is_file():
            shutil.copy2(source / name, destination / name)
