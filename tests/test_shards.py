"""Streaming token shards (``tapa tokenize``): the shards equal the in-memory tokenization,
the memory-mapped loader gives the same segments and batches (and the same training run),
a single text file gets a token-level validation split, memory stays bounded, resume is
exact, ``hf:`` datasets are streamed, and bad input is one line."""

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch

from tapa.cli import main
from tapa.data.segments import Sampler, Segments
from tapa.data.shards import ShardedTokens, load_shards, tokenize_corpus
from tapa.data.sources import load_corpus
from tapa.data.token_cache import tokenize_documents
from tapa.data.tokenizer import Bytes, HFTokenizer
from tapa.model import load_pretrained

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """12 text files (one with a 3000-byte line and multi-byte characters) and a JSONL file."""
    root = tmp_path_factory.mktemp("corpus") / "src"
    root.mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "whale", "Emma", "café", "naïve", "über", "sea", "\n", "ship", "—"]
    for i in range(12):
        text = " ".join(rng.choice(words, 200 + 37 * i))
        if i == 3:
            text += "x" * 3000 + "é" * 700 + "\n"
        (root / f"doc{i:02d}.txt").write_text(text)
    (root / "blank.txt").write_text("  \n\n")
    with (root / "z.jsonl").open("w") as f:
        for i in range(6):
            f.write(json.dumps({"text": f"json document {i} " * (20 + i)}) + "\n")
        f.write("\n")
    return root


def bpe(corpus):
    return HFTokenizer.train_bpe(load_corpus(str(corpus)).documents("train"), 320)


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_shards_equal_the_in_memory_tokenization(corpus, tmp_path, kind):
    tokenizer = Bytes() if kind == "byte" else bpe(corpus)
    # small shards and chunks: documents cross shard boundaries and long documents are chunked
    tokenize_corpus(
        str(corpus), tmp_path / "shards", tokenizer, shard_tokens=700, chunk_bytes=4096 if kind == "bpe" else 512
    )
    loaded_tok, arrays = load_shards(tmp_path / "shards")
    assert loaded_tok.fingerprint() == tokenizer.fingerprint()
    memory = load_corpus(str(corpus))
    for split in ("train", "validation"):
        reference = tokenize_documents(memory.documents(split), tokenizer)
        array = arrays[split]
        assert np.array_equal(array.offsets, reference.offsets)
        assert np.array_equal(array.tokens[np.arange(len(array.tokens))], reference.tokens)
        assert len(array.tokens.maps) > 1 or split == "validation"
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["splits"]["validation"]["documents"] == 1  # 18 documents: the 10th goes to validation
    assert index["dtype"] == "<u2"


def test_mmap_loader_gives_the_same_batches_and_training_run(corpus, tmp_path):
    tokenize_corpus(str(corpus), tmp_path / "shards", Bytes(), shard_tokens=999)
    _, arrays = load_shards(tmp_path / "shards")
    reference = tokenize_documents(load_corpus(str(corpus)).documents("train"), Bytes())
    mapped, memory = Segments(arrays["train"], 64), Segments(reference, 64)
    assert np.array_equal(mapped.starts, memory.starts)
    sampler = Sampler(len(mapped), 8, seed=3)
    for step in (0, 1, 7, 50):  # across epochs too
        for rank in range(2):  # each rank its own slice of the same global batch
            idx = sampler.rank_batch(step, rank, 2)
            for a, b in zip(mapped.batch(idx), memory.batch(idx), strict=True):
                assert torch.equal(a, b)
    # the same training run: identical metrics from the shard folder and from the text folder
    common = [
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(["train", "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "b"), *common]) == 0
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("loss") == 4
    strip = [
        {k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    other = [
        {k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert strip == other


def test_resume_from_shards_is_exact(corpus, tmp_path):
    tokenize_corpus(str(corpus), tmp_path / "shards", Bytes(), shard_tokens=999)
    args = [
        "train",
        "--data",
        str(tmp_path / "shards"),
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "6",
        "--save-every",
        "3",
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    assert main([*args, "--out", str(tmp_path / "half"), "--steps", "6"]) == 0
    # drop everything after step 3, then resume: the same final weights, bit for bit
    import shutil

    shutil.rmtree(tmp_path / "half" / "checkpoints" / "step_00000006")
    (tmp_path / "half" / "model.safetensors").unlink()
    assert main([*args, "--out", str(tmp_path / "half"), "--resume"]) == 0
    a, b = load_pretrained(tmp_path / "full").state_dict(), load_pretrained(tmp_path / "half").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_single_text_file_gets_a_token_level_split(tmp_path):
    text = "".join(f"line {i} of one long book, ça va\n" for i in range(5000))
    (tmp_path / "book.txt").write_text(text)
    index = tokenize_corpus(
        str(tmp_path / "book.txt"), tmp_path / "s", Bytes(), val_fraction=0.05, chunk_bytes=1000, shard_tokens=20_000
    )
    _, arrays = load_shards(tmp_path / "s")
    train, val = (arrays[s].tokens[np.arange(len(arrays[s].tokens))] for s in ("train", "validation"))
    assert train[-1] == val[-1] == Bytes().eos_id  # each part ends with EOS
    whole = np.frombuffer(text.encode(), dtype=np.uint8)
    assert np.array_equal(np.concatenate([train[:-1], val[:-1]]), whole)  # nothing lost, nothing repeated
    assert 0.049 < (len(val) - 1) / len(whole) < 0.051
    assert bytes(val[:5].astype(np.uint8)).decode() == "line " and train[-2] == ord("\n")  # cut at a line end
    assert index["validation_rule"].startswith("token-level")


def test_tokenize_streams_in_bounded_memory(tmp_path):
    """A 160 MB file tokenized with peak memory far below its size (a subprocess, so the
    measurement is of tokenize alone)."""
    line = ("It is a truth universally acknowledged, that a single man in possession of a good fortune " * 4) + "\n"
    with (tmp_path / "big.txt").open("w") as f:
        for _ in range(160_000_000 // len(line)):
            f.write(line)
    size = (tmp_path / "big.txt").stat().st_size
    script = textwrap.dedent(f"""
        from tapa.data.shards import tokenize_corpus
        from tapa.data.tokenizer import Bytes
        from tapa.utils.memory import measure_peak
        index, peak = measure_peak(lambda: tokenize_corpus({str(tmp_path / "big.txt")!r}, {str(tmp_path / "s")!r},
                                                           Bytes(), shard_tokens=2**24))
        print(peak, index["splits"]["train"]["tokens"] + index["splits"]["validation"]["tokens"])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ONE_THREAD, timeout=300)
    assert res.returncode == 0, res.stderr
    peak, tokens = map(int, res.stdout.split())
    assert tokens == size + 2  # every byte plus two EOS
    assert peak < size / 8, f"peak {peak / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB corpus"


def test_hf_datasets_are_streamed(tmp_path, monkeypatch):
    calls = {}

    def load_dataset(name, config=None, streaming=False):
        calls.update(name=name, config=config, streaming=streaming)
        return {"train": ({"text": f"row {i} " * 10} for i in range(25))}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    index = tokenize_corpus("hf:someone/corpus:cfg", tmp_path / "s", Bytes())
    assert calls == {"name": "someone/corpus", "config": "cfg", "streaming": True}
    assert index["splits"]["validation"]["documents"] == 2 and index["splits"]["train"]["documents"] == 23
    _, arrays = load_shards(tmp_path / "s")
    docs = [f"row {i} " * 10 for i in range(25)]
    reference = tokenize_documents([d for i, d in enumerate(docs) if i % 10 == 9], Bytes())
    assert np.array_equal(arrays["validation"].tokens[np.arange(len(reference.tokens))], reference.tokens)


def test_sharded_tokens_index_like_an_array():
    parts = [np.arange(0, 5, dtype=np.uint16), np.arange(5, 6, dtype=np.uint16), np.arange(6, 13, dtype=np.uint16)]
    flat = ShardedTokens(parts, np.dtype(np.uint16))
    rows = np.array([[0, 4, 5, 6], [12, 11, 5, 3]])
    assert np.array_equal(flat[rows], rows) and len(flat) == 13
    with pytest.raises(IndexError):
        flat[np.array([13])]


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["MISSING"], "does not exist"),
        ("empty", ["EMPTYDIR"], "holds no .txt, .md or .jsonl files"),
        ("badjson", ["BADJSON"], "is not valid JSON"),
        ("one", ["ONEJSONL"], "holds a single document"),
        ("none", ["BOOK", "--val-fraction", "1.5"], "--val-fraction must be in (0, 1)"),
        ("none", ["BOOK", "--tokenizer", "MISSING"], "does not exist"),
        ("none", ["BOOK", "--shard-tokens", "0"], "--shard-tokens must be >= 1"),
        ("notempty", ["BOOK"], "is not empty"),
    ],
)
def test_bad_tokenize_input_is_one_line_and_writes_nothing(tmp_path, capsys, setup, args, message):
    (tmp_path / "book.txt").write_text("a line\n" * 100)
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{oops\n')
    (tmp_path / "one.jsonl").write_text('{"text": "only one"}\n')
    out = tmp_path / "out"
    if setup == "notempty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    names = {
        "MISSING": str(tmp_path / "missing"),
        "EMPTYDIR": str(tmp_path / "emptydir"),
        "BADJSON": str(tmp_path / "bad.jsonl"),
        "ONEJSONL": str(tmp_path / "one.jsonl"),
        "BOOK": str(tmp_path / "book.txt"),
    }
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(["tokenize", *[names.get(a, a) for a in args], "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def million(tmp_path_factory):
    """Byte-level shards of one file of 1.2M bytes: shards of 2^20 tokens, the first a million ids."""
    root = tmp_path_factory.mktemp("million")
    rng = np.random.default_rng(1)
    data = rng.integers(97, 123, 1_200_000, dtype=np.uint8)
    data[::80] = ord("\n")  # lines, so that the validation split can cut at a line end
    (root / "big.txt").write_bytes(bytes(data))
    out = root / "shards"
    tokenize_corpus(str(root / "big.txt"), out, Bytes(), shard_tokens=1 << 20)
    return out


def train_on(shards, tmp_path, capsys):
    code = main(
        [
            "train",
            "--data",
            str(shards),
            "--steps",
            "1",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--d-model",
            "16",
            "--n-layers",
            "1",
            "--n-heads",
            "2",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    return code, capsys.readouterr().err


def test_one_bad_id_among_a_million_is_refused_before_training(million, tmp_path, capsys):
    import shutil

    index = json.loads((million / "index.json").read_text())
    first = index["splits"]["train"]["shards"][0]
    assert first["tokens"] == 1 << 20 and first["max_id"] < 259  # recorded at tokenize time
    bad = tmp_path / "bad"
    shutil.copytree(million, bad)
    shard = np.memmap(bad / first["file"], dtype=np.dtype(index["dtype"]), mode="r+")
    shard[654_321] = 300  # one id past the 259-token vocabulary
    shard.flush()
    del shard
    code, err = train_on(bad, tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds token id 300 at position 654321, outside the vocabulary of 259" in err
    assert not (tmp_path / "run").exists()
    # an id inside the vocabulary but not the one recorded: the shard changed since tokenize
    shard = np.memmap(bad / first["file"], dtype=np.dtype(index["dtype"]), mode="r+")
    shard[654_321] = 258
    shard.flush()
    del shard
    code, err = train_on(bad, tmp_path, capsys)
    assert code == 2 and "changed since tapa tokenize (largest id 258" in err


def _with_shards(index, shards):
    return {**index, "splits": {"train": {**index["splits"]["train"], "shards": shards}}}


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("a JSON list", lambda index: [index]),
        ("no splits", lambda index: {k: v for k, v in index.items() if k != "splits"}),
        ("a bad dtype", lambda index: {**index, "dtype": "float77"}),
        ("a float dtype", lambda index: {**index, "dtype": "<f4"}),
        ("a shard without tokens", lambda index: _with_shards(index, [{"file": "x.bin"}])),
        ("a split that is a string", lambda index: {**index, "splits": {"train": "abc"}}),
        ("a shard path outside the folder", lambda index: _with_shards(index, [{"file": "../x.bin", "tokens": 1}])),
    ],
)
def test_a_corrupt_index_is_one_line(million, tmp_path, capsys, name, corrupt):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(million, bad)
    index = json.loads((bad / "index.json").read_text())
    (bad / "index.json").write_text(json.dumps(corrupt(index)))
    code, err = train_on(bad, tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (name, err)
    assert "index.json" in err and "re-run tapa tokenize" in err, (name, err)
    assert not (tmp_path / "run").exists()
