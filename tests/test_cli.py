"""The command line: user errors give one line on stderr and exit code 2."""

import subprocess
import sys

import pytest
import torch

from tapa.cli import main
from tapa.model import ModelConfig, TapaLM, save_pretrained


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "tapa.cli", *args], capture_output=True, text=True, timeout=120)


def test_missing_checkpoint_is_one_line_exit_2(tmp_path):
    res = run_cli("info", str(tmp_path / "missing"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "no such directory" in res.stderr and "Traceback" not in res.stderr


def test_corrupt_checkpoint_exit_2_and_file_untouched(tmp_path):
    ckpt = save_pretrained(TapaLM(ModelConfig(d_model=32, n_layers=1, n_heads=2)), tmp_path / "c")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    res = run_cli("generate", str(ckpt), "--prompt", "hi")
    assert res.returncode == 2 and "model.safetensors is truncated" in res.stderr  # named by the manifest
    assert weights.read_bytes() == b"not a safetensors file"


def test_info_and_generate_on_a_saved_model(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = save_pretrained(TapaLM(ModelConfig(d_model=32, n_layers=1, n_heads=2)), tmp_path / "c")
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert "M parameters" in out and '"positional": "tapa"' in out
    assert main(["generate", str(ckpt), "--prompt", "Emma", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Emma")


def test_bad_flag_value_exits_2():
    with pytest.raises(SystemExit) as info:
        main(["demo", "--positional", "xpos"])
    assert info.value.code == 2


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--seconds", "2", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "bits per byte" in out and "--- sample" in out
    assert (tmp_path / "demo" / "model.safetensors").is_file()


def test_every_verbs_help_shows_each_default_once_and_plain_metavars():
    """--help of every verb (nested ones too): no flag says its default twice, flags with a
    default say it, and metavars are plain (D_MODEL, not MODEL.D_MODEL)."""
    import argparse
    import re

    from tapa.cli import build_parser

    def verbs(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield (*prefix, name), sub
                    yield from verbs(sub, (*prefix, name))

    seen = 0
    for path, parser in verbs(build_parser()):
        text = parser.format_help()
        for entry in re.split(r"\n  (?=-)", text):
            assert entry.count("(default") <= 1, (path, entry)
        assert not re.findall(r"\b[A-Z_]+\.[A-Z_]+\b", text), path
        for action in parser._actions:
            shown = all(action.default is not x for x in (None, False, argparse.SUPPRESS))
            if action.option_strings and shown and action.help:
                assert "default" in action.help, (path, action.option_strings)
                seen += 1
    assert seen > 20
    train = dict(verbs(build_parser()))[("train",)].format_help()
    assert "--d-model D_MODEL" in train and "--tapa-phase-scale TAPA_PHASE_SCALE" in train
