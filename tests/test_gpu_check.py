"""scripts/gpu_check.sh: the script a lent GPU will run. CI has no GPU, so it checks that the
script parses, refuses bad arguments, and that its dry mode (the same steps at toy sizes on
CPU, Triton under its interpreter) writes a complete JSON."""

import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_gpu_check_parses_and_refuses_bad_arguments(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 2 and "--out DIR is required" in res.stderr
    res = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path), "--bogus"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown argument --bogus" in res.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_writes_one_json_of_every_step(tmp_path):
    pytest.importorskip("triton")
    res = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] is True and result["ok"] is True
    assert set(result["steps"]) == {"tests", "benchmark", "preset"}
    assert all(step["exit"] == 0 and step["seconds"] > 0 for step in result["steps"].values())
    assert result["attention"] is not None  # the benchmark's raw numbers
