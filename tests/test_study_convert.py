"""The RoPE -> TAPA conversion study: the weights carried over, the step-0 points, the
'within 5%' rule, the report, and a non-RoPE parent refused."""

import json
import math

import pytest
import torch

from tapa.cli import main
from tapa.model import ModelConfig, load_pretrained
from tapa.study.convert import STUDIES, run_convert, steps_to_within
from tapa.train.config import TrainConfig
from tapa.train.trainer import run_training


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    model = ModelConfig(positional="rope", d_model=32, n_layers=1, n_heads=2, max_seq_len=32)
    config = TrainConfig(
        out=str(root / "parent"),
        seq_len=32,
        batch_size=4,
        steps=6,
        eval_every=0,
        save_every=6,
        eval_segments=4,
        cache_dir=str(root / "cache"),
        model=model,
    )
    run_training(config, progress=False)
    return root


def test_steps_to_within_reads_both_criteria():
    parent = {"loss": 4.0, "perplexity": math.exp(4.0)}
    curve = [
        {"step": s, "loss": loss, "perplexity": math.exp(loss)}
        for s, loss in [(0, 6.0), (50, 4.3), (100, 4.15), (150, 4.04), (200, 4.1)]
    ]
    # loss: 4.15 <= 4.2 first at step 100; perplexity: exp(4.04) <= 1.05 exp(4) (4.04 < 4 + ln 1.05 = 4.0488) at 150
    assert steps_to_within(curve, parent) == {"loss": 100, "perplexity": 150}
    assert steps_to_within(curve[:2], parent) == {"loss": None, "perplexity": None}


def test_convert_study_smoke(parent, tmp_path, capsys):
    out = tmp_path / "study"
    results = run_convert(STUDIES["smoke"], str(parent / "parent"), out, str(parent / "cache"), verbose=False)
    tapa, yarn = results["children"]["tapa"], results["children"]["rope_yarn"]
    converted = load_pretrained(next(out.glob("stages/convert_tapa-*/run")))
    source = load_pretrained(parent / "parent")
    assert converted.config.positional == "tapa" and converted.config.rope_scaling is None
    for name, tensor in source.state_dict().items():  # TAPA has no parameters of its own: every weight kept
        assert torch.equal(converted.state_dict()[name], tensor)
    assert [p["step"] for p in tapa["curve"]] == [0, 2, 4] == [p["step"] for p in yarn["curve"]]
    ft = TrainConfig.load(
        out
        / "stages"
        / next(p.name for p in (out / "stages").glob("finetune_rope_yarn-*"))
        / "run"
        / "train_config.json"
    )
    assert ft.model.rope_scaling == {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32}
    assert ft.seq_len == 128 and ft.init_from == str((parent / "parent").resolve())
    again_lr = results["children"]["tapa_rope_lr"]
    assert again_lr["lr"] == yarn["lr"] == 2 * tapa["lr"]  # the converted model again, at YaRN's fine-tuning LR
    parent_l0 = results["parent_eval"]["lengths"]["32"]
    assert tapa["within"] == steps_to_within(tapa["curve"], parent_l0)
    # the last curve point is the final model, scored the same way
    assert tapa["curve"][-1]["perplexity"] == pytest.approx(tapa["final"]["lengths"]["32"]["perplexity"])
    report = (out / "report.md").read_text()
    assert "RoPE -> TAPA (converted)" in report and (out / "figures" / "convert.png").stat().st_size > 1000
    assert json.loads((out / "results.json").read_text())["l0"] == 32
    # a second call reuses every stage
    again = run_convert(STUDIES["smoke"], str(parent / "parent"), out, str(parent / "cache"), verbose=True)
    assert "done earlier" in capsys.readouterr().out and again["children"]["tapa"]["curve"] == tapa["curve"]


def test_convert_study_refuses_a_tapa_parent(parent, tmp_path, capsys):
    assert main(["convert", str(parent / "parent"), "--positional", "tapa", "--out", str(tmp_path / "t")]) == 0
    code = main(["study", "convert", str(tmp_path / "t"), "--out", str(tmp_path / "study")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pass a trained RoPE run" in err
    assert not (tmp_path / "study").exists()
