"""Perplexity by length and per-position loss: windows score every token once, protocols
agree with direct computations, RoPE overrides apply (and are refused for TAPA), bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from tapa.evaluate.perplexity import evaluate_perplexity
from tapa.evaluate.positions import position_losses
from tapa.evaluate.windows import windows
from tapa.model import ModelConfig, TapaLM, load_pretrained
from tapa.train.config import TrainConfig
from tapa.train.trainer import run_training


@pytest.mark.parametrize("n", [2, 3, 17, 64, 65, 100])
@pytest.mark.parametrize(("window", "stride"), [(1, 1), (4, 1), (4, 3), (8, 8), (16, 5), (200, 50)])
def test_every_target_scored_exactly_once_with_enough_context(n, window, stride):
    scored = []
    for i, w in enumerate(windows(n, window, stride)):
        assert w.length == min(window, n - 1)
        targets = range(w.start + 1 + w.first_scored, w.end + 1)
        scored.extend(targets)
        if i > 0:  # after the first window, every new target has >= window - stride tokens of context
            assert all(t - w.start >= min(window - stride, t) for t in targets)
    assert sorted(scored) == list(range(1, n))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    cache = str(root / "cache")
    out = {}
    for scheme in ("tapa", "rope"):
        # a larger init makes attention (and so positions) matter after a few steps
        model = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=32, positional=scheme, init_std=0.2)
        config = TrainConfig(
            out=str(root / scheme),
            seq_len=32,
            batch_size=4,
            steps=30,
            eval_every=0,
            save_every=0,
            eval_segments=4,
            cache_dir=cache,
            model=model,
        )
        run_training(config, progress=False)
        out[scheme] = root / scheme
    out["cache"] = cache
    return out


def test_stride_equal_to_window_is_the_non_overlapping_loss(runs):
    model = load_pretrained(runs["rope"]).eval()
    doc = torch.randint(0, 256, (4 * 16 + 1,))
    result = evaluate_perplexity(model, [doc], 16, 16)
    chunks = doc[:-1].view(4, 16), doc[1:].view(4, 16)
    with torch.no_grad():
        direct = model.loss(*chunks).item()
    assert result.tokens == 64 and result.windows == 4
    assert result.loss == pytest.approx(direct, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(direct), rel=1e-5)


def test_window_covering_the_document_is_its_full_loss_for_any_stride(runs):
    model = load_pretrained(runs["tapa"]).eval()
    doc = torch.randint(0, 256, (41,))
    with torch.no_grad():
        direct = model.loss(doc[None, :-1], doc[None, 1:]).item()
    for stride in (1, 7, 64):
        result = evaluate_perplexity(model, [doc], 64, stride)
        assert result.tokens == 40 and result.loss == pytest.approx(direct, rel=1e-5)


def test_sliding_window_counts_and_context(runs):
    model = load_pretrained(runs["tapa"]).eval()
    docs = [torch.randint(0, 256, (n,)) for n in (50, 97)]
    sliding = evaluate_perplexity(model, docs, 16, 4, batch_size=3)
    flat = evaluate_perplexity(model, docs, 16, 16)
    assert sliding.tokens == flat.tokens == 49 + 96
    assert sliding.windows == len(windows(50, 16, 4)) + len(windows(97, 16, 4))
    assert sliding.loss != pytest.approx(flat.loss, rel=1e-7)  # more context per token changes the number


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tapa.cli", *args], capture_output=True, text=True, timeout=300)


def test_eval_ppl_cli_writes_results_and_pi_changes_rope_only(runs, tmp_path):
    common = ["--lengths", "16", "64", "--max-tokens", "600", "--cache-dir", runs["cache"], "--no-progress"]
    plain = cli("eval-ppl", str(runs["rope"]), "--out", str(tmp_path / "a"), *common)
    assert plain.returncode == 0, plain.stderr
    assert "| 64 | 2 | sliding | 16 |" in plain.stdout
    pi = cli("eval-ppl", str(runs["rope"]), "--out", str(tmp_path / "b"), "--pi", "4", *common)
    assert pi.returncode == 0, pi.stderr
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [r["length"] for r in a["results"]] == [16, 64] and a["results"][0]["tokens"] == 599
    assert b["inference_scaling"] == "pi x4"
    assert a["results"][1]["perplexity"] != pytest.approx(b["results"][1]["perplexity"], rel=1e-3)

    refused = cli("eval-ppl", str(runs["tapa"]), "--out", str(tmp_path / "c"), "--pi", "4", *common)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "rescales RoPE, but this checkpoint uses 'tapa'" in refused.stderr and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["MISSING", "--lengths", "16"], "no such directory"),
        (["RUN", "--lengths", "0"], "'0' is not a positive integer"),
        (["RUN", "--lengths", "abc"], "'abc' is not a positive integer"),
        (["RUN", "--lengths", "16", "--stride", "32"], "stride: 32 is larger than the window 16"),
    ],
)
def test_eval_ppl_bad_input(runs, tmp_path, args, message):
    args = [str(tmp_path / "missing") if a == "MISSING" else str(runs["tapa"]) if a == "RUN" else a for a in args]
    res = cli("eval-ppl", *args, "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()


def test_position_losses_equal_a_direct_per_position_mean(runs):
    model = load_pretrained(runs["tapa"]).eval()
    doc = torch.randint(0, 256, (3 * 8 + 5,))
    curve = position_losses(model, [doc], 8, batch_size=2)
    rows = torch.stack([doc[s : s + 9] for s in (0, 8, 16)])
    with torch.no_grad():
        logits = model(rows[:, :-1])
        direct = torch.nn.functional.cross_entropy(logits.transpose(1, 2), rows[:, 1:], reduction="none").mean(0)
    np.testing.assert_allclose(curve.mean(), direct.numpy(), rtol=1e-5)
    assert list(curve.counts) == [3] * 8
    buckets = curve.buckets()
    assert [(b["from"], b["to"]) for b in buckets] == [(1, 1), (2, 3), (4, 7), (8, 8)]
    assert buckets[2]["loss"] == pytest.approx(direct[3:7].mean().item(), rel=1e-5)


def test_eval_positions_cli_writes_json_and_png(runs, tmp_path):
    res = cli(
        "eval-positions",
        str(runs["rope"]),
        "--length",
        "128",
        "--max-tokens",
        "1000",
        "--out",
        str(tmp_path / "p"),
        "--cache-dir",
        runs["cache"],
        "--no-progress",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "p" / "positions.json").read_text())
    assert report["length"] == 128 and report["windows"] == 7 and report["training_length"] == 32
    assert (tmp_path / "p" / "positions.png").read_bytes()[:4] == b"\x89PNG"


def test_untrained_model_is_near_uniform():
    model = TapaLM(ModelConfig(d_model=32, n_layers=1, n_heads=2)).eval()
    result = evaluate_perplexity(model, [torch.randint(0, 256, (65,))], 16, 8)
    assert result.perplexity == pytest.approx(259, rel=0.1)  # init_std 0.02: logits near 0


def test_single_file_corpus_is_scored_whole_and_vocab_mismatch_is_one_line(tmp_path, capsys):
    from tapa.cli import main
    from tapa.model import ModelConfig, TapaLM, save_pretrained

    text = "It is a truth universally acknowledged, that a single man must be in want of a wife. " * 20
    (tmp_path / "one.txt").write_text(text)
    tiny = ModelConfig(vocab_size=259, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    save_pretrained(TapaLM(tiny), tmp_path / "m")
    args = ["eval-ppl", str(tmp_path / "m"), "--data", str(tmp_path / "one.txt"), "--lengths", "16", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "ev")]) == 0  # no "--val-data" advice from a verb that lacks it
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]
    assert rows[0]["tokens"] == len(text.encode()) + 1 - 1  # every byte and the EOS, but the first, are scored
    save_pretrained(TapaLM(ModelConfig(vocab_size=200, d_model=16, n_layers=1, n_heads=2)), tmp_path / "small")
    capsys.readouterr()
    assert main(["eval-ppl", str(tmp_path / "small"), "--lengths", "16", "--out", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer has 259 ids but its model only 200" in err
    assert not (tmp_path / "ev2").exists()


def test_the_sweep_behind_eval_ppl_is_callable_from_python():
    from tapa.data.tokenizer import Bytes
    from tapa.errors import ConfigError
    from tapa.evaluate.sweep import check_lengths_fit, perplexity_sweep, sweep_plan

    assert sweep_plan([16, 32], ["sliding", "non-overlapping"], None) == [
        (16, "sliding", 4),
        (16, "non-overlapping", 16),
        (32, "sliding", 8),
        (32, "non-overlapping", 32),
    ]
    assert sweep_plan([16], ["sliding"], 3) == [(16, "sliding", 3)]
    torch.manual_seed(0)
    model = TapaLM(
        ModelConfig(positional="tapa", vocab_size=259, d_model=32, n_layers=1, n_heads=2, max_seq_len=16)
    ).eval()
    tokenizer = Bytes()
    docs = [torch.tensor(tokenizer.encode("the sweep reads every window of this short text " * 3))]
    rows = perplexity_sweep(model, docs, tokenizer, sweep_plan([16, 32], ["sliding"], None), batch_size=2)
    for row, (length, stride) in zip(rows, ((16, 4), (32, 8)), strict=True):
        direct = evaluate_perplexity(model, docs, length, stride, batch_size=2)
        assert row["length"] == length and row["perplexity"] == pytest.approx(direct.perplexity)
        assert row["bits_per_byte"] == pytest.approx(direct.loss / math.log(2))  # one byte per token
    with pytest.raises(ConfigError, match="--lengths 999 is longer than the longest held-out document"):
        check_lengths_fit([16, 999], docs, "the test split", 100)
    with pytest.raises(ConfigError, match="the test split holds no tokens"):
        check_lengths_fit([16], [], "the test split", 100)
