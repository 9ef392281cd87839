"""Data: the embedded default corpus, user corpora, tokenizers, the token cache and segments."""

from tapa.data.byte_tokenizer import ByteTokenizer
from tapa.data.corpus import BOOKS, SPLITS, load_book, load_split
from tapa.data.segments import Sampler, Segments
from tapa.data.sources import Corpus, load_corpus, read_documents
from tapa.data.token_cache import TokenArray, cached_tokens, tokenize_documents
from tapa.data.tokenizer import (
    Bytes,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    build_tokenizer,
    load_checkpoint_tokenizer,
)

__all__ = [
    "BOOKS",
    "SPLITS",
    "ByteTokenizer",
    "Bytes",
    "Corpus",
    "HFTokenizer",
    "Sampler",
    "Segments",
    "SentencePieceTokenizer",
    "TokenArray",
    "Tokenizer",
    "build_tokenizer",
    "cached_tokens",
    "load_book",
    "load_checkpoint_tokenizer",
    "load_corpus",
    "load_split",
    "read_documents",
    "tokenize_documents",
]
