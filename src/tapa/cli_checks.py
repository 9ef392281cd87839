"""Checks every verb's arguments go through before any work starts (one-line errors).

The checks are by argument name, not by verb, so that one rule covers every verb that has
the flag: an output folder that cannot be created, a device that does not exist, a seed
or a learning rate out of range. They run before anything is read, computed or written.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapa.errors import ConfigError
from tapa.train.run_dir import RunDir


def check_out(path: str, flag: str = "--out") -> None:
    """The folder can be created (or exists as a folder) and written, without creating it."""
    out = Path(path)
    if out.is_symlink() and not out.exists():
        raise ConfigError(
            f"{flag} {path} is a symbolic link to {os.readlink(out)}, which does not exist; "
            "remove the link or choose another path"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose a folder path")
    ancestor = out
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{flag} {path}: {ancestor} is a file, so the folder cannot be created; choose another path")
    try:  # the only reliable test of "can create here" (/proc, read-only mounts, permissions)
        probe = tempfile.mkdtemp(dir=ancestor, prefix=".tapa-probe-")
        os.rmdir(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(
            f"{flag} {path}: cannot create folders in {ancestor} ({reason}); choose another path"
        ) from None


def check_device(value: str) -> None:
    import torch

    if value == "auto":
        return
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {value!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {value}: CUDA is not available here (torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {value}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ConfigError(f"--device {value}: unsupported device type {device.type!r}; use auto, cpu or cuda")
    try:  # the build may know the type without having it (mps, xpu on a CPU build): allocate once
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError, AttributeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:120]
        raise ConfigError(f"--device {value}: cannot allocate a tensor there ({first}); use cpu or auto") from None


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# argument name -> (valid?, what it must be)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda x: isinstance(x, int) and 0 <= x < 2**63, "an integer >= 0"),
    "lr": (lambda x: _finite(x) and x > 0, "a finite number > 0"),
    "temperature": (lambda x: _finite(x) and x >= 0, "a finite number >= 0 (0 decodes greedily)"),
    "seconds": (lambda x: _finite(x) and x > 0, "a finite number of seconds > 0"),
    "top_k": (lambda x: isinstance(x, int) and x >= 0, "an integer >= 0 (0 keeps every token)"),
    "max_new_tokens": (lambda x: isinstance(x, int) and x >= 0, "an integer >= 0"),
    "mu0": (_finite, "a finite number"),
    "nu0": (_finite, "a finite number"),
    "segments": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "gpus": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "seq_len": (lambda x: isinstance(x, int) and x >= 1, "an integer >= 1"),
    "segment_length": (lambda x: isinstance(x, int) and x >= 2, "an integer >= 2"),
}


# verbs that save a model into --out: an existing model or run there is never overwritten
MODEL_WRITERS = {"demo", "train", "finetune", "passkey-finetune"}


def check_no_model(path: str, command: str, resume: object) -> None:
    out = Path(path)
    if resume or not out.is_dir():
        return
    if RunDir(out).holds_run():
        hint = "pass --resume to continue it or " if command in ("train", "finetune") else ""
        raise ConfigError(f"--out {path} already holds a training run; {hint}choose another --out")
    if (out / "model.safetensors").exists():
        raise ConfigError(f"--out {path} already holds a model (model.safetensors); choose another --out")


def check_not_in_a_run(path: str, command: str) -> None:
    """Results folders (studies, reproductions, evaluations, exports) never go into a training
    run or a saved model, and no verb writes into a run's checkpoints folder (RUN/checkpoints/...):
    those belong to the run (RUN/eval and the like stay allowed)."""
    out = Path(path).absolute()
    if out.is_dir() and command not in MODEL_WRITERS:
        if RunDir(out).holds_run():
            raise ConfigError(
                f"--out {path} holds a training run; tapa {command} writes a folder of its own: choose another --out"
            )
        if (out / "model.safetensors").exists() and (out / "config.json").exists():
            raise ConfigError(
                f"--out {path} holds a saved model; tapa {command} writes a folder of its own: choose another --out"
            )
    owner = RunDir.owning(out)  # RUN/checkpoints and the checkpoints in it belong to the run
    if owner is not None:
        raise ConfigError(
            f"--out {path} is inside the checkpoints of the run in {owner.path}; choose a folder outside them"
        )


def check_args(args: argparse.Namespace) -> None:
    """Every rule whose argument this verb has; then the output folder and the device."""
    values = vars(args)
    for name, (valid, must_be) in RULES.items():
        if name in values and values[name] is not None and not valid(values[name]):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {values[name]}: must be {must_be}")
    from tapa.model import load_config

    for name in ("checkpoint", "checkpoints", "parent", "compare"):  # every model a verb reads, before any work
        given = values.get(name)
        for path in [given] if isinstance(given, str) else given or []:
            load_config(path)
    if values.get("device") is not None:
        check_device(str(values["device"]))
    if values.get("cache_dir") is not None:
        check_out(str(values["cache_dir"]), "--cache-dir")
    if values.get("out") is not None:
        check_out(str(values["out"]))
        if values.get("command") in MODEL_WRITERS:
            check_no_model(str(values["out"]), values["command"], values.get("resume"))
        check_not_in_a_run(str(values["out"]), str(values.get("command")))
