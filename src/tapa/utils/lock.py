"""An exclusive lock on an output folder for the life of a command.

Two tapa processes writing into the same folder would interleave their files and lose
one run's results; the second one is refused at once instead. The lock is an ``flock`` on
``.tapa.lock`` inside the folder (released by the kernel if the process dies). A folder the
command created is removed again if the command fails before writing anything else.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tapa.errors import ConfigError

LOCK_NAME = ".tapa.lock"


def _created_dirs(out: Path) -> list[Path]:
    """The folders mkdir(parents=True) would create, deepest first."""
    missing = []
    path = out
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


@contextmanager
def locked_output(path: str | Path) -> Iterator[Path]:
    out = Path(path)
    created = _created_dirs(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_NAME
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = lock.read_text().strip() or "?"
        raise ConfigError(
            f"--out {out} is in use by another tapa process (pid {holder}); wait for it or choose another --out"
        ) from None
    try:  # from here on, whatever fails (a full disk while writing the pid too) removes the lock
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield out
    finally:
        lock.unlink(missing_ok=True)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        for folder in created:  # a failed start leaves nothing behind
            try:
                folder.rmdir()  # only if still empty
            except OSError:
                break
