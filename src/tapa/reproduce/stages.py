"""Resumable stages: each stage's output lives in ``OUT/stages/NAME-HASH/`` where HASH is
derived from its config; ``result.json`` (written atomically, last) marks it done, so a
re-run skips finished stages and an interrupted training stage resumes from its checkpoint."""

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


def stage_dir(out: Path, name: str, config: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return out / "stages" / f"{name}-{digest}"


def run_stage(
    out: Path, name: str, config: dict[str, Any], work: Callable[[Path], dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    """Run ``work(directory)`` unless the stage already finished; record wall time and peak memory."""
    directory = stage_dir(out, name, config)
    done = directory / RESULT_FILE
    if done.is_file():
        log(f"  {name}: done earlier, reusing {directory.name}")
        return json.loads(done.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True, default=str) + "\n")
    start = time.perf_counter()
    if peak_rss_supported():
        result, peak = measure_peak(lambda: work(directory))
    else:
        result, peak = work(directory), None
    result = {**result, "seconds": time.perf_counter() - start, "peak_memory_mib": peak / 2**20 if peak else None}
    atomic_write_text(done, json.dumps(result, indent=1, default=float) + "\n")
    log(f"  {name}: {result['seconds']:.1f} s")
    return result
