"""Tokenizers as transformers folders: ``tokenizer.json`` + ``tokenizer_config.json``.

A BPE trained by tapa is already a ``tokenizer.json``; its special tokens are declared in
``tokenizer_config.json`` so ``AutoTokenizer`` knows bos/eos/pad. The byte tokenizer
becomes an equivalent fast tokenizer with the same ids: a BPE model without merges whose
vocabulary is the 256 byte symbols of the ByteLevel pre-tokenizer (id = byte value), then
the three specials at 256-258, with the ByteLevel decoder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tapa.data.byte_tokenizer import ByteTokenizer
from tapa.data.tokenizer import HF_FILE, SPECIALS, HFTokenizer, Tokenizer
from tapa.errors import ConfigError

BYTE_SPECIALS = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}


def byte_tokenizer_json():
    """A ``tokenizers.Tokenizer`` equal to tapa's byte tokenizer on every text (ids 0-255 = bytes)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in BYTE_SPECIALS.values()])
    ids = ByteTokenizer()
    got = [tok.token_to_id(BYTE_SPECIALS[k]) for k in ("bos", "eos", "pad")]
    if got != [ids.bos_id, ids.eos_id, ids.pad_id]:
        raise AssertionError(f"byte specials landed at {got}")
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def special_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """bos/eos/pad token ids for config.json and generation_config.json."""
    if isinstance(tokenizer, HFTokenizer):
        found = {k: tokenizer.tok.token_to_id(t) for k, t in zip(("bos", "eos", "pad"), SPECIALS, strict=True)}
        found["eos"] = tokenizer.eos_id
        return {f"{k}_token_id": v for k, v in found.items() if v is not None}
    if isinstance(tokenizer, ByteTokenizer):
        return {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    return {}


def export_tokenizer(tokenizer: Tokenizer, run: Path, out: Path) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``AutoTokenizer``."""
    if isinstance(tokenizer, HFTokenizer):
        shutil.copy2(run / HF_FILE, out / "tokenizer.json")
        vocab = tokenizer.tok.get_vocab()
        names = {k: t for k, t in zip(("bos", "eos", "pad"), SPECIALS, strict=True) if t in vocab}
        eos_name = tokenizer.tok.id_to_token(tokenizer.eos_id)
        names["eos"] = eos_name
    elif isinstance(tokenizer, ByteTokenizer):
        byte_tokenizer_json().save(str(out / "tokenizer.json"))
        names = dict(BYTE_SPECIALS)
    else:
        raise ConfigError("export-hf: a SentencePiece tokenizer is not exported yet; export a byte or BPE run")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1_000_000_000,
        "clean_up_tokenization_spaces": False,
        **{f"{k}_token": v for k, v in names.items()},
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
