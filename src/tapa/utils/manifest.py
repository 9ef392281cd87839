"""``manifest.json``: the size and SHA-256 of every file of a saved model or checkpoint.

Written last (a folder without one is incomplete) and checked on every load, so a
truncated or altered file is named instead of silently loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tapa.errors import CheckpointError
from tapa.utils.files import atomic_write_text

MANIFEST_FILE = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | Path, names: list[str], **extra: object) -> None:
    """Record ``names`` (files in ``directory``), plus any extra fields, atomically."""
    directory = Path(directory)
    files = {n: {"bytes": (directory / n).stat().st_size, "sha256": sha256_file(directory / n)} for n in names}
    atomic_write_text(directory / MANIFEST_FILE, json.dumps({**extra, "files": files}, indent=1) + "\n")


def manifest_files(directory: str | Path) -> dict[str, dict] | None:
    """``{name: {"bytes", "sha256"}}`` from the folder's manifest, None if it is absent or unreadable."""
    try:
        files = json.loads((Path(directory) / MANIFEST_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return files if isinstance(files, dict) else None


def verify_manifest(directory: str | Path, required: bool = True) -> bool:
    """Check every file the manifest lists; False when there is none and it is not required."""
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).exists() and not required:
        return False
    files = manifest_files(directory)
    if files is None:
        raise CheckpointError(f"checkpoint: {directory} has no readable {MANIFEST_FILE}; it is incomplete")
    for name, info in files.items():
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint: {file} is missing")
        if file.suffix == ".json":  # an edited or garbled JSON file: say what is wrong with it
            try:
                json.loads(file.read_text())
            except (UnicodeDecodeError, ValueError) as err:
                raise CheckpointError(f"checkpoint: {file} is not valid JSON ({str(err)[:80]})") from None
        if file.stat().st_size != info["bytes"]:
            raise CheckpointError(f"checkpoint: {file} is truncated ({file.stat().st_size} of {info['bytes']} bytes)")
        if sha256_file(file) != info["sha256"]:
            raise CheckpointError(f"checkpoint: {file} is corrupt (its SHA-256 does not match the manifest)")
    return True
