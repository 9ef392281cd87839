"""The embedded corpus equals the shared source books; splits hold whole, distinct books."""

import hashlib
from pathlib import Path

import pytest

from tapa.data import BOOKS, SPLITS, ByteTokenizer, load_book, load_split
from tapa.errors import ConfigError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "books"


def test_splits_partition_the_books():
    names = [b for split in SPLITS.values() for b in split]
    assert sorted(names) == sorted(BOOKS) and len(set(names)) == len(names)
    assert len(load_split("validation")) == 1


@pytest.mark.skipif(not (SHARED / "MD5SUMS").is_file(), reason="shared/ books not beside the checkout")
def test_embedded_books_match_md5sums():
    sums = dict(line.split()[::-1] for line in (SHARED / "MD5SUMS").read_text().splitlines() if line.strip())
    for name in BOOKS:
        digest = hashlib.md5(load_book(name).encode("utf-8")).hexdigest()
        assert digest == sums[f"{name}.txt"], name


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "Mrs. Weston — café"
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text
    assert tok.encode_tensor(text).tolist() == tok.encode(text)


def test_unknown_split():
    with pytest.raises(ConfigError, match="split: unknown 'dev'"):
        load_split("dev")
