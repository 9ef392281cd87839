"""Resumable stages: each stage's output lives in ``OUT/stages/NAME-HASH/`` where HASH is
derived from its config; ``result.json`` (written atomically, last) marks it done, so a
re-run skips finished stages and an interrupted training stage resumes from its checkpoint.

Paths inside OUT are stored and hashed as ``$OUT/...``: a reproduce folder that is copied
or moved keeps every finished stage."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tapa.utils.files import atomic_write_text
from tapa.utils.memory import measure_peak, peak_rss_supported

RESULT_FILE = "result.json"


OUT_MARK = "$OUT"


def _map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, str | Path):
        return fn(str(obj))
    if isinstance(obj, dict):
        return {k: _map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_map_strings(v, fn) for v in obj]
    return obj


def relative_to_out(obj: Any, out: Path) -> Any:
    """Every string naming a path inside ``out`` written as ``$OUT/...``."""
    prefixes = sorted({str(out), str(out.resolve())}, key=len, reverse=True)

    def rel(text: str) -> str:
        for prefix in prefixes:
            if text == prefix or text.startswith(prefix + "/"):
                return OUT_MARK + text[len(prefix) :]
        return text

    return _map_strings(obj, rel)


def absolute_in_out(obj: Any, out: Path) -> Any:
    def expand(text: str) -> str:
        return str(out) + text[len(OUT_MARK) :] if text.startswith(OUT_MARK) else text

    return _map_strings(obj, expand)


def printer(verbose: bool) -> Callable[[str], None]:
    """The progress log of a pipeline: print (flushed) when verbose, else nothing."""

    def log(text: str) -> None:
        if verbose:
            print(text, flush=True)

    return log


def stage_dir(out: Path, name: str, config: dict[str, Any]) -> Path:
    portable = relative_to_out(config, out)
    digest = hashlib.sha256(json.dumps(portable, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return out / "stages" / f"{name}-{digest}"


def run_stage(
    out: Path, name: str, config: dict[str, Any], work: Callable[[Path], dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    """Run ``work(directory)`` unless the stage already finished; record wall time and peak memory."""
    directory = stage_dir(out, name, config)
    done = directory / RESULT_FILE
    if done.is_file():
        log(f"  {name}: done earlier, reusing {directory.name}")
        return absolute_in_out(json.loads(done.read_text()), out)
    directory.mkdir(parents=True, exist_ok=True)
    portable = relative_to_out(config, out)
    (directory / "config.json").write_text(json.dumps(portable, indent=1, sort_keys=True, default=str) + "\n")
    start = time.perf_counter()
    if peak_rss_supported():
        result, peak = measure_peak(lambda: work(directory))
    else:
        result, peak = work(directory), None
    result = {**result, "seconds": time.perf_counter() - start, "peak_memory_mib": peak / 2**20 if peak else None}
    atomic_write_text(done, json.dumps(relative_to_out(result, out), indent=1, default=float) + "\n")
    log(f"  {name}: {result['seconds']:.1f} s")
    return result


def finished_seconds(out: Path) -> float:
    """Wall time of every finished stage under ``out`` (each counted once, however many
    results refer to it)."""
    return sum(float(json.loads(p.read_text())["seconds"]) for p in Path(out).glob(f"stages/*/{RESULT_FILE}"))
