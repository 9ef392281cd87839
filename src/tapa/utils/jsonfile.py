"""Reading a JSON object from a file with one clean error for every way it can be wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tapa.errors import ConfigError, TapaError


def read_json_object(path: str | Path, what: str, error: type[TapaError] = ConfigError) -> dict[str, Any]:
    """The JSON object in ``path``; otherwise ``error`` with one line: ``{what}: {path} is not
    valid JSON (reason at line N)`` / ``does not exist or cannot be read`` / ``holds a JSON list,
    not an object``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{what}: {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise error(f"{what}: {path} does not exist or cannot be read ({reason})") from None
    if not isinstance(data, dict):
        raise error(f"{what}: {path} holds a JSON {type(data).__name__}, not an object")
    return data
