"""The benchmark scripts run end to end on tiny shapes and write numbers that agree with
themselves (ratios recomputed from the raw times), and the timing helpers pair and
interleave as they claim."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import timing  # noqa: E402


def run_script(name: str, *args: str, out: Path) -> dict:
    result = subprocess.run(
        [sys.executable, str(BENCH / name), *args, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text())


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # per-round ratios 2, 2, 1: median 2, where the ratio of the medians would be 3 / 2
    assert timing.paired_ratio([2.0, 4.0, 3.0], [1.0, 2.0, 3.0]) == 2.0
    # per-round ratios 0.5, 3, 3: median 3, where the ratio of the medians would be 3 / 2
    assert timing.paired_ratio([1.0, 6.0, 3.0], [2.0, 2.0, 1.0]) == 3.0
    with pytest.raises(ValueError):
        timing.paired_ratio([1.0, 2.0], [1.0])


def test_time_interleaved_calls_every_function_once_per_round():
    calls: list[str] = []
    times = timing.time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds in turn
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}


def test_time_interleaved_measures_each_function_itself():
    """A 5 ms sleep is timed at >= 5 ms every round, and a no-op at less than that."""
    import time

    times = timing.time_interleaved({"sleep": lambda: time.sleep(0.005), "noop": lambda: None}, repeats=3)
    assert all(t >= 0.005 for t in times["sleep"])
    assert max(times["noop"]) < min(times["sleep"])


def test_machine_line_names_cpu_threads_torch_and_kernel_isa():
    line = timing.machine()
    assert timing.cpu_model() in line
    assert "threads" in line and "torch 2." in line and "fused kernel ISA" in line


def test_attention_benchmark_ratios_match_its_times(tmp_path):
    data = run_script(
        "attention.py",
        "--lengths",
        "128",
        "--repeats",
        "3",
        "--methods",
        "tapa_chunked",
        "--max-reference-len",
        "0",
        out=tmp_path / "attn.json",
    )
    assert data["environment"].startswith(timing.cpu_model())
    (row,) = data["rows"]
    assert row["L"] == 128
    for key in ("fwd", "fwdbwd"):
        mine, base = row[f"tapa_chunked_{key}_times"], row[f"rope_sdpa_{key}_times"]
        assert len(mine) == len(base) == 3
        assert row[f"tapa_chunked_{key}_s"] == pytest.approx(statistics.median(mine))
        assert row[f"tapa_chunked_{key}_ratio"] == pytest.approx(
            statistics.median(m / b for m, b in zip(mine, base, strict=True))
        )
    # the measured rise must at least hold what one forward + backward keeps: the output and the
    # gradients of q, k, v (4 tensors of batch 1 x 4 heads x 128 x 64 float32 = 128 KiB each)
    floor = 4 * 1 * 4 * 128 * 64 * 4 / 2**20
    assert row["tapa_chunked_peak_mib"] >= floor and row["rope_sdpa_peak_mib"] >= floor


def test_training_benchmark_ratio_is_tokens_per_second_ratio(tmp_path):
    data = run_script(
        "training.py",
        "--lengths",
        "32",
        "--tokens-per-step",
        "64",
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--repeats",
        "2",
        out=tmp_path / "train.json",
    )
    assert data["meta"]["machine"].startswith(timing.cpu_model()) and "1 threads" in data["meta"]["machine"]
    (row,) = data["rows"]
    rate = row["tokens_per_s"]
    assert row["ratio"] == pytest.approx(rate["tapa"] / rate["rope"])
    assert rate["tapa"] > 0 and rate["rope"] > 0


def test_decoding_benchmark_rates_come_from_its_step_times(tmp_path):
    data = run_script(
        "decoding.py",
        "--contexts",
        "32",
        "--new-tokens",
        "3",
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--repeats",
        "1",
        out=tmp_path / "dec.json",
    )
    (row,) = data["rows"]
    steps = row["steps_s"]
    assert len(steps["tapa"]) == len(steps["rope"]) == 3
    for scheme in ("tapa", "rope"):
        assert row["tokens_per_s"][scheme] == pytest.approx(1.0 / statistics.median(steps[scheme]))
    assert row["ratio"] == pytest.approx(
        statistics.median(r / t for r, t in zip(steps["rope"], steps["tapa"], strict=True))
    )
