"""Every vector build of the fused CPU kernel this CPU can run (AVX-512, AVX2, the C library's
cos/sin/exp), each against the reference through the fused kernel's own tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tapa.attention.fused_cpu as fused
from tapa.errors import ConfigError

TESTS = Path(__file__).parent


def test_vector_isa_defaults_to_widest_and_rejects_bad_names(monkeypatch):
    flags = fused._cpu_flags()
    monkeypatch.delenv("TAPA_FUSED_ISA", raising=False)
    widest = fused.vector_isa()
    if {"avx512f", "avx2", "fma"} <= flags:
        assert widest == "avx512" and "-DTAPA_AVX512" in fused._build_flags()
    elif {"avx2", "fma"} <= flags:
        assert widest == "avx2" and "-DTAPA_AVX2" in fused._build_flags()
    monkeypatch.setenv("TAPA_FUSED_ISA", "none")
    assert fused.vector_isa() == "none"
    assert not any(f.startswith("-DTAPA_") for f in fused._build_flags())
    monkeypatch.setenv("TAPA_FUSED_ISA", "sse9")
    with pytest.raises(ConfigError, match="TAPA_FUSED_ISA: expected one of auto, avx512, avx2, none"):
        fused.vector_isa()


def test_missing_isa_names_the_ones_available(monkeypatch):
    if fused.platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86 flags only")
    monkeypatch.setattr(fused, "_cpu_flags", lambda: {"avx2", "fma"})
    assert fused.available_isas() == ["avx2", "none"]
    monkeypatch.setenv("TAPA_FUSED_ISA", "avx512")
    with pytest.raises(ConfigError, match="this CPU lacks avx512; use one of avx2, none"):
        fused.vector_isa()


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx512", "avx2", "none"])
def test_each_build_matches_the_reference(isa):
    if isa not in fused.available_isas():
        pytest.skip(f"this CPU cannot run the {isa} build")
    env = {**os.environ, "TAPA_FUSED_ISA": isa}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TESTS / "test_attention_fused_cpu.py")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]
