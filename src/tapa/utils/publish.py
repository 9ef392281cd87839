"""Write a folder's files to a staging folder inside it, then move them into place (a generic
writer: export, import, conversion, token shards all publish through it)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tapa.errors import ConfigError
from tapa.utils.files import current_umask
from tapa.utils.lock import LOCK_NAME

STAGING = ".partial"


def check_empty_out(out: Path, flag: str = "--out") -> None:
    """Refuse an --out that holds anything (but our lock and a killed run's staging folder)."""
    if out.is_dir():
        taken = sorted(p.name for p in out.iterdir() if p.name not in (LOCK_NAME, STAGING))
        if taken:
            raise ConfigError(f"{flag} {out} is not empty ({', '.join(taken[:3])}); choose a new folder")


def publish(out: Path, write: Callable[[Path], None]) -> Path:
    """``write(staging)`` then move every file it wrote into ``out``; nothing lands on failure."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    mask = current_umask()
    for path in sorted(staging.iterdir()):
        # normal permissions whatever the writer used (safetensors and mkstemp write 0600)
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
        os.replace(path, out / path.name)
    staging.rmdir()
    return out
