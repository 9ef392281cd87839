"""Every CLI verb against every class of bad input it can receive.

Each case must give exit code 2, exactly one line on stderr, no traceback, and leave the
workspace exactly as it was (every file hashed before and after, no folder created).
The cases are built from the verbs' own flags, so a new verb or flag joins the sweep by
appearing in the tables below.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tapa.cli import main
from tapa.model import ModelConfig, TapaLM, save_pretrained

# minimal valid arguments of each verb; CKPT, OUT are filled in per case
VERBS: dict[str, list[str]] = {
    "demo": ["--seconds", "1"],
    "info": ["CKPT"],
    "generate": ["CKPT", "--prompt", "hi"],
    "train": ["--steps", "1"],
    "finetune": ["CKPT", "--steps", "1"],
    "eval-ppl": ["CKPT", "--lengths", "16"],
    "eval-positions": ["CKPT"],
    "passkey": ["CKPT"],
    "passkey-finetune": ["CKPT", "--steps", "1"],
    "theory": [],
    "bias": ["CKPT"],
    "reproduce": ["--preset", "smoke"],
    "study ablation": ["--ladder", "smoke"],
    "study recall": ["--study", "smoke"],
    "study scale": ["--ladder", "smoke"],
    "study diagnose": ["CKPT"],
    "study convert": ["CKPT", "--study", "smoke"],
    "study lr": ["--preset", "smoke", "--grid", "smoke"],
    "study phase-scale": ["--study", "smoke"],
    "study real-convert": ["CKPT", "--study", "smoke"],
    "tokenize": ["FILE"],
    "consolidate": ["CKPT"],
    "export-hf": ["CKPT"],
    "import-hf": ["CKPT"],
    "convert": ["CKPT", "--positional", "tapa"],
    "plan": ["CONFIG"],
}
WRITERS = [v for v in VERBS if v not in ("info", "generate", "plan")]
WITH_CHECKPOINT = [v for v, a in VERBS.items() if "CKPT" in a or "CONFIG" in a]
WITH_DEVICE = ["train", "finetune", "eval-ppl", "eval-positions", "passkey"]
WITH_SEED = ["demo", "generate", "train", "finetune", "passkey", "passkey-finetune", "bias"]
WITH_LR = ["train", "finetune", "passkey-finetune"]
MODEL_WRITERS = ["demo", "train", "finetune", "passkey-finetune", "export-hf", "import-hf", "convert"]


def cases() -> list[tuple[str, str, list[str]]]:
    """(verb, input class, extra arguments); OUT/CKPT/FILE/MODEL are placeholders."""
    out: list[tuple[str, str, list[str]]] = []
    for verb in WRITERS:
        out += [
            (verb, "out is a file", ["--out", "FILE"]),
            (verb, "out cannot be created", ["--out", "/proc/tapa-sweep/out"]),
            (verb, "out below a file", ["--out", "FILE/sub"]),
            (verb, "out is a dangling symlink", ["--out", "DANGLING"]),
            (verb, "out with a newline in /proc", ["--out", "/proc/tapa\nsweep"]),
        ]
    for verb in WITH_CHECKPOINT:
        out += [(verb, "missing checkpoint", ["CKPT=MISSING"]), (verb, "checkpoint is a file", ["CKPT=FILE"])]
    for verb in WITH_DEVICE:
        out += [(verb, "bogus device", ["--device", "bogus"]), (verb, "cuda on a CPU build", ["--device", "cuda"])]
        if not torch.backends.mps.is_available():  # a type the build knows but cannot use
            out.append((verb, "mps on a build without it", ["--device", "mps"]))
        if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
            out.append((verb, "xpu on a build without it", ["--device", "xpu"]))
    for verb in WITH_SEED:
        out += [(verb, "negative seed", ["--seed", "-1"]), (verb, "non-numeric seed", ["--seed", "abc"])]
    for verb in WITH_LR:
        out += [(verb, f"lr {x}", ["--lr", x]) for x in ("nan", "-1", "0", "inf")]
    for verb in MODEL_WRITERS:
        out.append((verb, "out holds a model", ["--out", "MODEL"]))
    for verb in WRITERS:  # every folder writer: not into a training run, not into its checkpoints
        if verb not in ("train", "finetune"):  # (those two resume there with --resume)
            out.append((verb, "out is a training run", ["--out", "RUN"]))
        out.append((verb, "out inside a run's checkpoints", ["--out", "RUN/checkpoints/mine"]))
    for verb, flag in (("train", "--cache-dir"), ("eval-ppl", "--cache-dir"), ("reproduce", "--cache-dir")):
        out += [(verb, "cache-dir is a file", [flag, "FILE"]), (verb, "cache-dir in /proc", [flag, "/proc/tapa-x"])]
    out += [
        ("generate", "temperature nan", ["--temperature", "nan"]),
        ("generate", "temperature -1", ["--temperature", "-1"]),
        ("generate", "top-k -1", ["--top-k", "-1"]),
        ("demo", "seconds nan", ["--seconds", "nan"]),
        ("demo", "seconds 0", ["--seconds", "0"]),
        ("demo", "seconds -1", ["--seconds", "-1"]),
        ("theory", "mu0 nan", ["--mu0", "nan"]),
        ("theory", "nu0 inf", ["--nu0", "inf"]),
        ("theory", "missing checkpoint", ["--checkpoint", "MISSING"]),
        ("train", "config is a JSON list", ["--config", "LISTJSON"]),
        ("train", "config is not JSON", ["--config", "FILE"]),
        ("train", "config missing", ["--config", "MISSING"]),
        ("eval-ppl", "length 0", ["--lengths", "0"]),
        ("eval-ppl", "length abc", ["--lengths", "abc"]),
        ("eval-ppl", "length longer than the data", ["--lengths", "100000", "--max-tokens", "512"]),
        ("passkey", "one candidate", ["--n-candidates", "1"]),
        ("passkey", "more candidates than keys", ["--n-candidates", "100000"]),
        ("bias", "near 0 far 0", ["--near", "0", "--far", "0"]),
        ("train", "RoPE flag on a TAPA model", ["--positional", "tapa", "--rope-base", "5e5"]),
        ("train", "TAPA flag on a RoPE model", ["--positional", "rope", "--tapa-theta", "0.3"]),
        ("study diagnose", "segment length 1", ["--segment-length", "1"]),
        ("study diagnose", "segments 0", ["--segments", "0"]),
        ("study recall", "method not in the study", ["--methods", "nope"]),
        ("study recall", "seed not in the study", ["--seeds", "7"]),
        ("study recall", "non-numeric seed", ["--seeds", "x"]),
        ("study recall", "jobs 0", ["--jobs", "0"]),
        ("plan", "gpus 0", ["--gpus", "0"]),
        ("plan", "seq-len 0", ["--seq-len", "0"]),
        ("plan", "config is a JSON list", ["CKPT=LISTJSON"]),
        ("convert", "TAPA run to TAPA: nothing to convert", []),
        ("study convert", "compare run missing", ["--compare", "MISSING"]),
        ("study diagnose", "segment length beyond memory", ["--segment-length", "1000000"]),
        ("study real-convert", "source is not a RoPE model", []),  # the workspace's checkpoint is TAPA
        ("study real-convert", "source is a text file", ["CKPT=FILE"]),
        ("study real-convert", "source missing", ["CKPT=MISSING"]),
        ("study real-convert", "train-minutes 0", ["--train-minutes", "0"]),
    ]
    # --rope-scaling values are checked with the flags' rules (rope_theta 0 is not "missing")
    for bad in (
        '{"rope_type": "yarn", "factor": 8, "rope_theta": "abc"}',
        '{"rope_type": "yarn", "factor": 1e400}',
        '{"rope_theta": 0}',
        '{"partial_rotary_factor": 0}',
        '"abc"',
        '{"rope_type": "yarn", "factor": "x"}',
        '{"rope_type": 3}',
        '{"rope_type": "longrope", "short_factor": [1, "a"], "long_factor": [1, 1]}',
    ):
        out.append(("train", f"rope-scaling {bad}", ["--positional", "rope", "--rope-scaling", bad]))
    return out


def digest(root: Path) -> dict[str, str]:
    entries = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            entries[rel] = f"link to {p.readlink()}"
        else:
            entries[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return entries


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    torch.manual_seed(0)
    model = TapaLM(ModelConfig(vocab_size=256, d_model=16, n_layers=1, n_heads=2, max_seq_len=16))
    save_pretrained(model, root / "ckpt")
    save_pretrained(model, root / "model_out")
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "list.json").write_text("[1, 2]\n")
    (root / "dangling").symlink_to(root / "nowhere")
    run = root / "run"  # the shape of a training run: its config and a checkpoints folder
    (run / "checkpoints").mkdir(parents=True)
    (run / "train_config.json").write_text("{}\n")
    return root


def substitute(args: list[str], root: Path) -> list[str]:
    names = {
        "CKPT": str(root / "ckpt"),
        "CONFIG": str(root / "ckpt" / "config.json"),
        "OUT": str(root / "new_out"),
        "FILE": str(root / "a_file.txt"),
        "MODEL": str(root / "model_out"),
        "MISSING": str(root / "missing"),
        "LISTJSON": str(root / "list.json"),
        "DANGLING": str(root / "dangling"),
        "RUN": str(root / "run"),
    }
    result = []
    for arg in args:
        head, _, tail = arg.partition("/")
        if arg in names:
            result.append(names[arg])
        elif head in names and tail:  # FILE/sub: a path below a placeholder
            result.append(f"{names[head]}/{tail}")
        else:
            result.append(arg)
    return result


def build_argv(verb: str, extra: list[str], root: Path) -> list[str]:
    base = list(VERBS[verb])
    if any(e.startswith("CKPT=") for e in extra):  # replace the checkpoint argument
        replacement = next(e for e in extra if e.startswith("CKPT=")).split("=", 1)[1]
        base = [replacement if a in ("CKPT", "CONFIG") else a for a in base]
        extra = [e for e in extra if not e.startswith("CKPT=")]
    flags = {extra[i] for i in range(0, len(extra), 2) if extra[i].startswith("--")}
    # drop base flags the case overrides, and give every writer a fresh --out unless the case sets one
    kept: list[str] = []
    skip = False
    for i, a in enumerate(base):
        if skip:
            skip = False
            continue
        if a in flags:
            skip = i + 1 < len(base) and not base[i + 1].startswith("--")
            continue
        kept.append(a)
    argv = [*verb.split(), *kept, *extra]
    if verb in WRITERS and "--out" not in argv:
        argv += ["--out", "OUT"]
    return substitute(argv, root)


@pytest.mark.parametrize(("verb", "kind", "extra"), cases(), ids=lambda x: x if isinstance(x, str) else None)
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(verb, kind, extra, workspace, capsys):
    argv = build_argv(verb, extra, workspace)
    before = digest(workspace)
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, f"{argv}: exit {code}, stderr {err!r}"
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.strip(), f"{argv}: stderr {err!r}"
    assert digest(workspace) == before, f"{argv} changed the workspace"


def test_sweep_covers_every_verb():
    from tapa.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == {verb.split()[0] for verb in VERBS}
    study = next(a for a in sub.choices["study"]._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {f"study {name}" for name in study.choices} == {v for v in VERBS if v.startswith("study ")}
    assert {verb for verb, _, _ in cases()} == set(VERBS)


def test_second_process_on_the_same_out_is_refused(tmp_path):
    import subprocess
    import sys

    from tapa.utils.lock import LOCK_NAME, locked_output

    out = tmp_path / "run"
    with locked_output(out):  # this process holds the folder, as a running command would
        res = subprocess.run(
            [sys.executable, "-m", "tapa.cli", "theory", "--out", str(out)], capture_output=True, text=True
        )
        assert res.returncode == 2 and res.stderr.count("\n") == 1
        assert "in use by another tapa process" in res.stderr and "Traceback" not in res.stderr
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused command wrote nothing
    assert not out.exists()  # released; the folder it created for nothing is gone
    with locked_output(out):  # and the next command gets it
        pass
