"""Exceptions raised for user errors.

Every user-facing problem (a bad configuration value, an impossible tensor shape, a
missing or corrupt file) raises a subclass of :class:`TapaError` whose message is one
line that names the offending field and how to fix it. The CLI turns these into a
one-line message on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations


class TapaError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(TapaError, ValueError):
    """A configuration value or function argument is invalid."""


class ShapeError(TapaError, ValueError):
    """Tensor shapes, dtypes or devices do not fit together."""


class CheckpointError(TapaError, OSError):
    """A checkpoint is missing, truncated or corrupt."""
