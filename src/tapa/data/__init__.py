"""Data: the embedded default corpus (seven public-domain novels) and the byte tokenizer."""

from tapa.data.byte_tokenizer import ByteTokenizer
from tapa.data.corpus import BOOKS, SPLITS, load_book, load_split

__all__ = ["BOOKS", "SPLITS", "ByteTokenizer", "load_book", "load_split"]
