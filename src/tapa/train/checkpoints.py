"""Training checkpoints: ``RUN/checkpoints/step_NNNNNNNN/`` holds the model (a loadable
pretrained directory), the tokenizer, ``trainer_state.pt`` (optimizer, scheduler, RNG states,
step and data position) and ``manifest.json`` (size and SHA-256 of every file).

A checkpoint is assembled in a hidden temporary directory and renamed into place, so a
kill at any moment leaves either the complete new checkpoint or none; the last ``keep_last``
complete checkpoints are kept. Verification checks the manifest, so a truncated or
bit-flipped file is reported by name rather than loaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from tapa.errors import CheckpointError
from tapa.model import TapaLM, save_pretrained
from tapa.train.run_dir import CHECKPOINT_DIR, PREFIX, RunDir
from tapa.utils.files import current_umask, write_file
from tapa.utils.manifest import MANIFEST_FILE, manifest_files, verify_manifest, write_manifest

STATE_FILE = "trainer_state.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with a manifest), oldest first (:meth:`RunDir.checkpoints`)."""
    return RunDir(run_dir).checkpoints()


def save_checkpoint(
    run_dir: str | Path, step: int, model: TapaLM, save_tokenizer, state: dict[str, Any], keep_last: int
) -> Path:
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: give the checkpoint normal permissions
    try:
        save_pretrained(model, tmp)
        save_tokenizer(tmp)
        write_file(tmp / STATE_FILE, lambda: torch.save(state, tmp / STATE_FILE))
        names = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
        write_manifest(tmp, names, step=step)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_checkpoint(run_dir, step, tmp, keep_last)


def publish_checkpoint(run_dir: str | Path, step: int, tmp: Path, keep_last: int) -> Path:
    """Rename the complete checkpoint folder ``tmp`` (manifest written) into place as
    ``step_N`` and keep only the last ``keep_last`` checkpoints."""
    root = Path(run_dir) / CHECKPOINT_DIR
    final = root / f"{PREFIX}{step:08d}"
    try:
        if final.exists():  # re-saving a step (after a resume): swap, never leave a gap
            trash = final.with_name(f".{final.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for stale in root.glob(f".{PREFIX}*"):  # leftovers of runs killed mid-save
        shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        # hide it first (one atomic rename): a kill during the deletion leaves a hidden
        # folder, removed by the next save, never a half-deleted checkpoint with its manifest
        trash = old.with_name(f".{old.name}.deleting")
        old.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    return final


def clean_incomplete(run_dir: str | Path) -> list[Path]:
    """Remove hidden leftovers and checkpoints whose manifest names files that are gone
    (half-deleted by a kill, before deletions were made atomic). Returns what it removed."""
    root = Path(run_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    removed = [p for p in root.glob(f".{PREFIX}*") if p.is_dir()]
    for ckpt in list_checkpoints(run_dir):
        files = manifest_files(ckpt)  # unreadable manifests are reported by verify_checkpoint when used
        if files is not None and any(not (ckpt / name).is_file() for name in files):
            removed.append(ckpt)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def verify_checkpoint(path: str | Path) -> None:
    """Raise CheckpointError naming the first missing, truncated or altered file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint: no such directory {path}")
    verify_manifest(path)


def resolve_resume(run_dir: str | Path, resume: str, checkpoints: list[Path] | None = None) -> Path:
    """``resume`` is ``"latest"`` or a checkpoint directory; the result is verified.
    ``checkpoints``: the run's complete checkpoints when the caller has just listed them."""
    if resume != "latest":
        path = Path(resume)
        own = (Path(run_dir) / CHECKPOINT_DIR).resolve()
        if path.resolve().parent != own:
            raise CheckpointError(
                f"resume: {path} is not a checkpoint of the run in {run_dir}; a run resumes only from its own "
                "checkpoints (continue another model with tapa finetune)"
            )
        verify_checkpoint(path)
        return path
    checkpoints = list_checkpoints(run_dir) if checkpoints is None else checkpoints
    if not checkpoints:
        raise CheckpointError(f"resume: {run_dir} has no checkpoint yet; start the run without --resume")
    try:
        verify_checkpoint(checkpoints[-1])
    except CheckpointError as err:
        previous = None
        for older in reversed(checkpoints[:-1]):
            try:
                verify_checkpoint(older)
                previous = older
                break
            except CheckpointError:
                continue
        hint = f"resume from the previous good one with --resume {previous}" if previous else "no earlier good one"
        raise CheckpointError(f"{err}; {hint}") from None
    return checkpoints[-1]


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError/UnpicklingError/EOFError for bad files
        raise CheckpointError(f"checkpoint: {Path(path) / STATE_FILE} cannot be read ({str(err)[:80]})") from None
