"""Chunked TAPA uses memory linear in L (forward + backward), measured as peak RSS.

Each measurement runs in a fresh Python process so that nothing else in the test session
(caches, earlier tensors) inflates or hides the peak. See tapa.utils.memory for the method.
"""

import json
import subprocess
import sys

import pytest

from tapa.utils.memory import peak_rss_supported

SCRIPT = """
import json, sys, torch
from tapa.attention import tapa_attention
from tapa.utils.memory import measure_peak
length, impl = int(sys.argv[1]), sys.argv[2]
torch.manual_seed(0)
q, k, v = (torch.randn(1, 4, length, 64, requires_grad=True) for _ in range(3))
def step():
    out = tapa_attention(q, k, v, impl=impl, causal=True)
    out.sum().backward()
_, peak = measure_peak(step)
print(json.dumps({"peak": peak}))
"""


def peak_bytes(length: int, impl: str) -> int:
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(length), impl], capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])["peak"]


pytestmark = pytest.mark.skipif(not peak_rss_supported(), reason="needs Linux /proc/self/clear_refs")


def test_measurement_sees_quadratic_memory_of_reference():
    # the method must be able to fail: the reference holds several 4 x L x L float32 tensors
    length = 2048
    one_matrix_all_heads = 4 * length * length * 4
    assert peak_bytes(length, "reference") > one_matrix_all_heads


def test_chunked_forward_backward_peak_below_one_score_matrix_at_8192():
    length = 8192
    one_matrix_one_head = length * length * 4  # 256 MiB
    peak = peak_bytes(length, "chunked")
    assert peak < one_matrix_one_head, f"peak {peak / 2**20:.0f} MiB"


def test_fused_forward_backward_peak_below_one_score_matrix_at_8192():
    from tapa.attention.fused_cpu import fused_cpu_available

    if not fused_cpu_available():
        pytest.skip("fused CPU kernel unavailable")
    length = 8192
    peak = peak_bytes(length, "fused")
    assert peak < length * length * 4, f"peak {peak / 2**20:.0f} MiB"
