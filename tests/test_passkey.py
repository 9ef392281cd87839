"""Passkey prompts (exact length, key at the asked depth), scoring with a rigged model, the
fine-tuning recipe and the CLI."""

import json
import random
import subprocess
import sys

import pytest
import torch

from tapa.data.corpus import load_split
from tapa.data.tokenizer import Bytes, HFTokenizer
from tapa.errors import ConfigError
from tapa.evaluate.passkey import (
    INTRO,
    QUESTION,
    candidate_correct,
    greedy_correct,
    make_prompt,
    passkey_grid,
)
from tapa.evaluate.passkey_finetune import passkey_batch
from tapa.model import ModelConfig, TapaLM, save_pretrained


@pytest.fixture(scope="module")
def bpe():
    return HFTokenizer.train_bpe(load_split("validation"), vocab_size=400)


@pytest.mark.parametrize("filler", ["grass", "books"])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("length", [300, 1000])
def test_prompt_has_the_asked_length_and_depth(filler, depth, length, bpe):
    for tok in (Bytes(), bpe):
        prompt = make_prompt(tok, length, depth, "40521", filler)
        assert prompt.ids.shape == (length,)
        intro, question = len(tok.encode(INTRO)), len(tok.encode(QUESTION))
        needle_len = len(tok.encode(" The pass key is 40521. Remember it. 40521 is the pass key. "))
        filler_len = length - intro - question - needle_len
        assert prompt.needle_start - intro == round(depth * filler_len)  # the key sits at the asked depth
        needle = tok.decode(prompt.ids[prompt.needle_start : prompt.needle_start + needle_len])
        assert "The pass key is 40521" in needle
        assert tok.decode(prompt.ids).endswith("What is the pass key? The pass key is")
        assert tok.decode(prompt.answer) == " 40521"


def test_prompt_too_short_and_bad_depth():
    with pytest.raises(ConfigError, match="too short"):
        make_prompt(Bytes(), 50, 0.5, "12345")
    with pytest.raises(ConfigError, match="depth"):
        make_prompt(Bytes(), 500, 1.5, "12345")


class Rigged(TapaLM):
    """Logits that spell ``key`` right after a prompt of ``prompt_len`` tokens (by position only)."""

    def __init__(self, key_ids, prompt_len):
        super().__init__(ModelConfig(d_model=16, n_layers=1, n_heads=2))
        self.key_ids, self.prompt_len = key_ids, prompt_len

    def forward(self, input_ids, cache=None, start_pos=None):
        start = getattr(cache, "rig_pos", 0) if cache is not None else (start_pos or 0)
        if cache is not None:
            cache.rig_pos = start + input_ids.shape[1]
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        for t in range(input_ids.shape[1]):
            i = start + t - (self.prompt_len - 1)
            if 0 <= i < len(self.key_ids):
                logits[:, t, self.key_ids[i]] = 8.0
        return logits


def test_scoring_ranks_the_key_first_for_a_model_given_the_answer():
    tok = Bytes()
    prompt = make_prompt(tok, 400, 0.5, "77031", "grass")
    right = Rigged(prompt.answer, len(prompt.ids))
    assert greedy_correct(right, prompt)
    assert candidate_correct(right, tok, prompt, random.Random(0), n_candidates=20)
    wrong = Rigged(tok.encode(" 12345"), len(prompt.ids))
    assert not greedy_correct(wrong, prompt)
    assert not candidate_correct(wrong, tok, prompt, random.Random(0), n_candidates=20)
    uniform = Rigged([], len(prompt.ids))  # all-zero logits: every candidate ties, none ranks strictly first
    assert not candidate_correct(uniform, tok, prompt, random.Random(0))


def test_grid_is_deterministic_and_covers_every_cell():
    torch.manual_seed(0)
    model = TapaLM(ModelConfig(d_model=16, n_layers=1, n_heads=2))
    a = passkey_grid(model, Bytes(), [200, 400], [0.0, 1.0], trials=2, filler="grass", seed=3)
    b = passkey_grid(model, Bytes(), [200, 400], [0.0, 1.0], trials=2, filler="grass", seed=3)
    assert a == b and [(c["length"], c["depth"]) for c in a] == [(200, 0.0), (200, 1.0), (400, 0.0), (400, 1.0)]


def test_finetune_batch_masks_only_the_answer():
    x, y, mask = passkey_batch(Bytes(), 256, 3, "books", random.Random(0))
    assert x.shape == y.shape == mask.shape == (3, 256)
    assert mask.sum(1).tolist() == [6, 6, 6]  # " " + five digits
    assert all(Bytes().decode(y[i][mask[i]]).strip().isdigit() for i in range(3))


def test_passkey_cli_end_to_end(tmp_path):
    torch.manual_seed(0)
    save_pretrained(TapaLM(ModelConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=200)), tmp_path / "m")
    common = ["--no-progress"]
    tuned = subprocess.run(
        [
            sys.executable,
            "-m",
            "tapa.cli",
            "passkey-finetune",
            str(tmp_path / "m"),
            "--out",
            str(tmp_path / "ft"),
            "--steps",
            "2",
            "--batch-size",
            "2",
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert tuned.returncode == 0, tuned.stderr
    grid = ["--lengths", "200", "400", "--depths", "0", "1", "--trials", "2"]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "tapa.cli",
            "passkey",
            str(tmp_path / "ft"),
            *grid,
            "--out",
            str(tmp_path / "pk"),
            *common,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "pk" / "passkey.json").read_text())
    assert len(report["cells"]) == 4 and report["training_length"] == 200
    assert (tmp_path / "pk" / "passkey.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "tapa.cli",
            "passkey",
            str(tmp_path / "m"),
            "--depths",
            "2",
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "depths must be in [0, 1]" in bad.stderr and not (tmp_path / "x").exists()
