"""Atomic file writes: write to a temporary name in the same directory, then rename."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """tapa's cache folder: ``$TAPA_CACHE``, else ``$XDG_CACHE_HOME/tapa``, else ``~/.cache/tapa``."""
    root = os.environ.get("TAPA_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "tapa")
    return Path(root).expanduser()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_file(path: str | Path, write: Callable[[], None]) -> None:
    """Run ``write()``, which writes ``path``. A failed write that a library raises as its own
    type (safetensors' SafetensorError "I/O error", torch.save's RuntimeError "PytorchStreamWriter
    failed writing file") is raised as the OSError it is, naming the file (a full disk, a
    file-size limit); anything else propagates unchanged."""
    try:
        write()
    except Exception as err:
        text = str(err).strip()
        library_io = (type(err).__name__ == "SafetensorError" and "I/O error" in text) or (
            isinstance(err, RuntimeError) and ("PytorchStreamWriter" in text or "No space left" in text)
        )
        if not library_io:
            raise
        reason = (text.splitlines() or [type(err).__name__])[0].split("] ")[-1]
        raise OSError(
            errno.EIO, f"could not write ({reason}): no space left or a file-size limit?", str(path)
        ) from None


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; on any failure the old file stays."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_file(path, lambda: write(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda p: Path(p).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))
