"""A full disk, simulated by a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) in a child
process: every writing verb gives one line naming the problem, exit 2, no traceback, and
leaves nothing half-written (no folder it created, no lock); a training run stopped that way
continues with --resume once the limit is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tapa.model import ModelConfig, TapaLM, save_pretrained

LIMITED = r"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from tapa.cli import main
sys.exit(main(sys.argv[2:]))
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--seq-len", "16", "--batch-size", "2"]


def run_limited(limit: int, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *argv],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    torch.manual_seed(0)
    save_pretrained(
        TapaLM(ModelConfig(d_model=64, n_layers=2, n_heads=2, positional="rope", max_seq_len=32)), root / "rope"
    )
    (root / "text.txt").write_text("a few lines of text\n" * 400)
    return root


# (verb and arguments, file-size limit): 0 fails the first byte written (the lock's pid too);
# 16 KiB lets small files through and stops the model files
CASES = {
    "export-hf": (["export-hf", "ROPE"], 16384),
    "import-hf": (["import-hf", "HF"], 16384),
    "convert": (["convert", "ROPE", "--positional", "tapa"], 16384),
    "train": (["train", "--steps", "2", "--no-progress", *TINY], 16384),
    "finetune": (["finetune", "ROPE", "--steps", "2", "--seq-len", "16", "--batch-size", "2", "--no-progress"], 16384),
    "demo": (["demo", "--seconds", "1"], 16384),
    "tokenize": (["tokenize", "TEXT"], 0),
    "eval-ppl": (["eval-ppl", "ROPE", "--lengths", "16", "--max-tokens", "256"], 0),
    "theory": (["theory"], 0),
    "bias": (["bias", "ROPE", "--pairs", "50"], 0),
    "passkey-finetune": (["passkey-finetune", "ROPE", "--steps", "1", "--length", "256", "--no-progress"], 16384),
    "passkey": (["passkey", "ROPE", "--lengths", "32", "--trials", "1", "--no-progress"], 0),
    "eval-positions": (["eval-positions", "ROPE", "--length", "64", "--max-tokens", "256"], 0),
    "reproduce": (["reproduce", "--preset", "smoke", "--quiet"], 0),
    "study phase-scale": (["study", "phase-scale", "--study", "smoke", "--quiet"], 0),
    "study real-convert": (["study", "real-convert", "ROPE", "--study", "smoke", "--quiet"], 0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_full_disk_is_one_line_and_leaves_nothing(models, tmp_path, case):
    argv, limit = CASES[case]
    if case == "import-hf":
        assert (
            subprocess.run(
                [sys.executable, "-m", "tapa.cli", "export-hf", str(models / "rope"), "--out", str(tmp_path / "hf")],
                env=ENV,
                capture_output=True,
            ).returncode
            == 0
        )
    names = {"ROPE": str(models / "rope"), "HF": str(tmp_path / "hf"), "TEXT": str(models / "text.txt")}
    out = tmp_path / "out"
    res = run_limited(limit, [names.get(a, a) for a in argv] + ["--out", str(out)], tmp_path)
    assert res.returncode == 2, (case, res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, (case, res.stderr[-2000:])
    assert "too large" in res.stderr.lower() or "no space" in res.stderr.lower(), (case, res.stderr)
    if case in ("train", "finetune"):  # a training run stays resumable; nothing else is left behind
        assert not (out / ".tapa.lock").exists()
        resume = res.stderr.split("continue with: ")[1].split()  # the command the message gives, as given
        assert resume[:2] == ["tapa", case] and resume[-1] == "--resume"
        again = subprocess.run(
            [sys.executable, "-m", "tapa.cli", *resume[1:], "--no-progress"],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        assert (out / "model.safetensors").is_file()
    else:
        assert not out.exists(), (case, sorted(p.name for p in out.rglob("*")))
