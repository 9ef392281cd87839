"""``tapa tokenize CORPUS --out DIR``: a corpus of any size into memory-mapped token shards."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser("tokenize", help="stream a corpus into token shards for tapa train --data DIR")
    tok.add_argument("corpus", metavar="CORPUS", help="a .txt/.md/.jsonl file, a directory, or hf:NAME[:CONFIG]")
    tok.add_argument("--out", required=True, help="a new (or empty) folder for the shards")
    tok.add_argument("--tokenizer", default="byte", help="byte, bpe (trained on the train split), or a tokenizer file")
    tok.add_argument("--bpe-vocab-size", type=int, default=4096, help="vocabulary of a trained BPE")
    tok.add_argument(
        "--bpe-train-bytes",
        type=int,
        default=2**28,
        help="train the BPE on at most this many bytes of the train split (bounded memory)",
    )
    tok.add_argument("--text-field", default="text", help="JSONL / dataset field holding the text")
    tok.add_argument("--val-fraction", type=float, default=0.01, help="validation share of a single text file")
    tok.add_argument("--shard-tokens", type=int, default=2**26, help="tokens per shard file")
    tok.set_defaults(func=_tokenize)


def _bpe_pieces(pairs, limit: int):
    """Text pieces of the train split's documents, up to ``limit`` characters."""
    seen = 0
    for split, document in pairs:
        if split != "train":
            for _ in document:  # drain (the stream is shared)
                pass
            continue
        for piece in document:
            if seen >= limit:
                return
            seen += len(piece)
            yield piece


def _tokenize(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tapa.data.shards import tokenize_corpus
    from tapa.data.tokenizer import HFTokenizer, build_tokenizer
    from tapa.utils.publish import check_empty_out

    check_empty_out(Path(args.out))
    if args.tokenizer == "bpe":
        if args.bpe_train_bytes < 1:
            from tapa.errors import ConfigError

            raise ConfigError(f"--bpe-train-bytes must be >= 1, got {args.bpe_train_bytes}")
        from tapa.data.shards import split_streams

        pairs, _ = split_streams(args.corpus, args.text_field, args.val_fraction)  # checks the corpus first
        pieces = _bpe_pieces(pairs, args.bpe_train_bytes)
        tokenizer = HFTokenizer.train_bpe(pieces, args.bpe_vocab_size)
    else:
        tokenizer = build_tokenizer(args.tokenizer)
    index = tokenize_corpus(
        args.corpus,
        args.out,
        tokenizer,
        text_field=args.text_field,
        val_fraction=args.val_fraction,
        shard_tokens=args.shard_tokens,
    )
    splits = index["splits"]
    parts = ", ".join(
        f"{s}: {i['tokens']:,} tokens in {i['documents']:,} documents, {len(i['shards'])} shard(s)"
        for s, i in splits.items()
    )
    print(
        f"tokenized {args.corpus} -> {args.out} ({index['dtype']}, vocabulary {index['vocab_size']}; {parts}; "
        f"validation: {index['validation_rule']}); train with: tapa train --data {args.out} ..."
    )
