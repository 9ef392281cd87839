"""Data: user corpora, tokenizers (byte, BPE, tokenizer.json, SentencePiece), the token cache, segments."""

import json

import numpy as np
import pytest

from tapa.data import token_cache
from tapa.data.corpus import SPLITS, load_split
from tapa.data.segments import Sampler, Segments
from tapa.data.sources import load_corpus, read_documents
from tapa.data.token_cache import TokenArray, cached_tokens, tokenize_documents
from tapa.data.tokenizer import Bytes, HFTokenizer, build_tokenizer, load_checkpoint_tokenizer, load_tokenizer_file
from tapa.errors import ConfigError

TEXT = "It is a truth universally acknowledged, that a single man — «naïve» 日本語 — must be in want of a wife.\n"


def test_book_splits_are_disjoint_whole_books():
    corpus = load_corpus("books")
    names = [set(SPLITS[s]) for s in ("train", "validation", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert corpus.documents("validation") == load_split("validation")
    assert len(corpus.documents("train")) == 5


def test_directory_of_files_and_jsonl(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(12):
        (tmp_path / "sub" / f"doc{i:02d}.txt").write_text(f"document {i}\n" * 5)
    (tmp_path / "notes.md").write_text("# markdown doc\n")
    (tmp_path / "ignored.csv").write_text("a,b\n")
    (tmp_path / "blank.txt").write_text("   \n")
    docs = read_documents(tmp_path)
    assert len(docs) == 13 and docs[0] == "# markdown doc\n"  # sorted paths, blank skipped, csv ignored
    corpus = load_corpus(str(tmp_path))
    # every tenth document goes to validation, whole
    assert corpus.documents("validation") == [docs[9]]
    assert len(corpus.documents("train")) == 12 and docs[9] not in corpus.documents("train")

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": f"text {i}", "id": i}) for i in range(3)) + "\n")
    assert read_documents(jsonl, text_field="body") == ["text 0", "text 1", "text 2"]
    with pytest.raises(ConfigError, match=r"no string field 'text'.*--text-field"):
        read_documents(jsonl)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "e.txt").write_text("  \n") and p / "e.txt", "is empty"),
        (lambda p: (p / "d").mkdir() or p / "d", "holds no .txt"),
        (lambda p: (p / "b.jsonl").write_text('{"text": "a"}\n{oops\n') and p / "b.jsonl", r"b.jsonl:2 is not valid"),
        (lambda p: (p / "x.pdf").write_text("a") and p / "x.pdf", "expected one of"),
        (lambda p: (p / "bin.txt").write_bytes(b"\xff\xfe\x00bad") and p / "bin.txt", "not UTF-8"),
    ],
)
def test_bad_corpora_name_the_problem(tmp_path, setup, message):
    with pytest.raises(ConfigError, match=message):
        read_documents(setup(tmp_path))


def test_single_document_needs_a_validation_source(tmp_path):
    (tmp_path / "one.txt").write_text("only one book")
    with pytest.raises(ConfigError, match=r"single document.*--val-data"):
        load_corpus(str(tmp_path / "one.txt"))
    (tmp_path / "val.txt").write_text("held out")
    corpus = load_corpus(str(tmp_path / "one.txt"), validation=str(tmp_path / "val.txt"))
    assert corpus.documents("train") == ["only one book"] and corpus.documents("validation") == ["held out"]


def test_hf_dataset_without_datasets_package_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ConfigError, match="needs the `datasets` package"):
        load_corpus("hf:pg19")


def test_byte_tokenizer_round_trips_and_saves(tmp_path):
    tok = Bytes()
    assert tok.decode(tok.encode(TEXT)) == TEXT and max(tok.encode(TEXT)) < 256
    tok.save(tmp_path)
    assert isinstance(load_checkpoint_tokenizer(tmp_path), Bytes)


@pytest.fixture(scope="module")
def bpe():
    return HFTokenizer.train_bpe(load_split("validation"), vocab_size=600)


def test_bpe_round_trips_any_text_and_compresses(bpe, tmp_path):
    assert bpe.vocab_size == 600
    book = load_split("test")[0][:20000]
    for text in (TEXT, book, "  leading and trailing spaces\t\n\n", "emoji 🙂 and \x00 control"):
        assert bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(book)) < 0.6 * len(book.encode())  # merges learnt from Austen compress Austen
    bpe.save(tmp_path)
    again = load_checkpoint_tokenizer(tmp_path)
    assert again.encode(book) == bpe.encode(book) and again.fingerprint() == bpe.fingerprint()
    assert load_tokenizer_file(tmp_path / "tokenizer.json").encode(TEXT) == bpe.encode(TEXT)
    assert bpe.decode([bpe.eos_id]) == ""  # EOS is a special token, not text


def test_bpe_vocab_too_small_is_an_error():
    with pytest.raises(ConfigError, match="bpe vocab size"):
        build_tokenizer("bpe", ["some text"], bpe_vocab_size=100)


def test_sentencepiece_model_by_path(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    text_file = tmp_path / "train.txt"
    text_file.write_text(load_split("validation")[0][:200000])
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(tmp_path / "sp"), vocab_size=300, model_type="bpe", minloglevel=2
    )
    tok = load_tokenizer_file(tmp_path / "sp.model")
    sentence = "Catherine Morland had never been seen as a heroine."
    ids = tok.encode(sentence)
    assert tok.decode(ids) == sentence and all(0 <= i < tok.vocab_size for i in ids)
    (tmp_path / "ckpt").mkdir()
    tok.save(tmp_path / "ckpt")
    assert load_checkpoint_tokenizer(tmp_path / "ckpt").encode(sentence) == ids


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_tokenizer(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"not a valid tokenizer\.json"):
        build_tokenizer(str(tmp_path / "bad.json"))


def test_token_cache_equals_fresh_tokenization_and_is_reused(tmp_path, monkeypatch, bpe):
    corpus = load_corpus("books")
    for tok in (Bytes(), bpe):
        first = cached_tokens(corpus, "validation", tok, tmp_path)
        fresh = tokenize_documents(corpus.documents("validation"), tok)
        assert isinstance(first.tokens, np.memmap)
        np.testing.assert_array_equal(first.tokens, fresh.tokens)
        np.testing.assert_array_equal(first.offsets, fresh.offsets)
        assert first.tokens[first.offsets[1] - 1] == tok.eos_id  # every document ends with EOS
    assert len(list(tmp_path.glob("*.bin"))) == 2  # keyed by tokenizer

    def boom(*args, **kwargs):
        raise AssertionError("re-tokenized despite the cache")

    monkeypatch.setattr(token_cache, "tokenize_documents", boom)
    again = cached_tokens(corpus, "validation", Bytes(), tmp_path)
    np.testing.assert_array_equal(again.tokens, tokenize_documents(corpus.documents("validation"), Bytes()).tokens)


def test_truncated_cache_file_is_rebuilt(tmp_path):
    corpus = load_corpus("books")
    first = cached_tokens(corpus, "test", Bytes(), tmp_path)
    (bin_path,) = tmp_path.glob("*.bin")
    expected = np.array(first.tokens)
    bin_path.write_bytes(bin_path.read_bytes()[:1000])
    np.testing.assert_array_equal(cached_tokens(corpus, "test", Bytes(), tmp_path).tokens, expected)


def _array(lengths):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenArray(np.arange(offsets[-1], dtype=np.int64), offsets)


def test_segments_stay_inside_documents():
    array = _array([10, 25, 3, 17])
    segs = Segments(array, 4)
    # floor((n - 1) / L) segments per document
    assert len(segs) == 9 // 4 + 24 // 4 + 2 // 4 + 16 // 4
    x, y = segs.batch(np.arange(len(segs)))
    assert x.shape == (len(segs), 4) and (y[:, :-1] == x[:, 1:]).all()
    doc_of = np.searchsorted(array.offsets, np.arange(array.offsets[-1]), side="right") - 1
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        assert len(set(doc_of[np.concatenate([row_x, row_y])])) == 1


def test_segment_length_longer_than_every_document():
    with pytest.raises(ConfigError, match="longer than every train document"):
        Segments(_array([10, 25]), 64)


def test_sampler_is_a_seeded_permutation_and_ranks_split_the_global_batch():
    sampler = Sampler(num_segments=10, global_batch=4, seed=3)
    epoch = np.concatenate([sampler.global_batch(s) for s in range(5)])  # 20 positions = 2 epochs
    assert sorted(epoch[:10]) == list(range(10)) and sorted(epoch[10:]) == list(range(10))
    assert not np.array_equal(epoch[:10], epoch[10:])
    assert np.array_equal(Sampler(10, 4, 3).global_batch(3), sampler.global_batch(3))  # depends on (seed, step) only
    assert not np.array_equal(Sampler(10, 4, 4).global_batch(0), Sampler(10, 4, 3).global_batch(0))
    halves = [sampler.rank_batch(2, r, 2) for r in range(2)]
    assert np.array_equal(np.concatenate(halves), sampler.global_batch(2))
