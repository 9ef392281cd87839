"""The fused C++ CPU kernel against the reference (the oracle), in outputs and gradients."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import rel_err
from tapa.attention import TapaPhase, linear_parts, quadratic_parts, reference_attention, tapa_attention
from tapa.attention.fused_cpu import _inference_inputs as fc_inference_inputs
from tapa.attention.fused_cpu import fused_cpu_attention, fused_cpu_available, unavailable_reason
from tapa.attention.phase import Parts

pytestmark = pytest.mark.skipif(not fused_cpu_available(), reason=f"fused CPU kernel: {unavailable_reason()}")


def run(fn, parts: Parts, v: torch.Tensor, d_out: torch.Tensor, **kw):
    leaves = [t.detach().clone().requires_grad_(True) for t in (*parts, v)]
    out = fn(Parts(*leaves[:4]), leaves[4], **kw)
    return out, torch.autograd.grad(out, leaves, d_out)


@st.composite
def attention_case(draw):
    h_kv = draw(st.integers(1, 3))
    d = 2 * draw(st.integers(1, 12))
    alpha = draw(st.sampled_from([0.1, 0.25, 0.5, 1.0]))
    lk = draw(st.integers(1, 90))
    causal = draw(st.booleans())
    lq = draw(st.integers(1, lk))
    return {
        "batch": draw(st.integers(1, 2)),
        "h_kv": h_kv,
        "heads": h_kv * draw(st.integers(1, 3)),
        "d": d,
        "theta": draw(st.integers(1, d - 1)) / d,
        "alpha": alpha,
        "lq": lq,
        "lk": lk,
        "causal": causal,
        # causal: queries at the end of the keys (KV cache) or anywhere; keys may start later
        "q_offset": draw(st.integers(0, lk - lq)) if causal else draw(st.integers(0, 200)),
        "k_offset": draw(st.integers(0, 3)),
        "block_q": draw(st.sampled_from([1, 5, 16, 64])),
        "block_k": draw(st.sampled_from([1, 8, 32, 128])),
        "splits": draw(st.sampled_from([0, 1, 2, 5])),
        "seed": draw(st.integers(0, 2**16)),
    }


def case_tensors(case: dict) -> tuple[torch.Tensor, ...]:
    """q, k, v and the output gradient of a drawn case, float64."""
    gen = torch.Generator().manual_seed(case["seed"])
    b, h, hk, d = case["batch"], case["heads"], case["h_kv"], case["d"]
    q = torch.randn(b, h, case["lq"], d, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hk, case["lk"], d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hk, case["lk"], d, generator=gen, dtype=torch.float64)
    return q, k, v, torch.randn(b, h, case["lq"], d, generator=gen, dtype=torch.float64)


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=attention_case())
def test_fused_matches_reference_float64_property(case):
    # float64 end to end: the two kernels must agree to rounding (~1e-15), so any wrong
    # position, mask, split or gradient term shows
    q, k, v, d_out = case_tensors(case)
    parts = quadratic_parts(q, k, case["theta"])
    kw = {"alpha": case["alpha"], "causal": case["causal"], "q_offset": case["q_offset"], "k_offset": case["k_offset"]}
    ref_out, ref_grads = run(reference_attention, parts, v, d_out, **kw)
    blocks = {"block_q": case["block_q"], "block_k": case["block_k"], "splits": case["splits"]}
    out, grads = run(fused_cpu_attention, parts, v, d_out, **kw, **blocks)
    assert out.dtype == torch.float64
    assert rel_err(out, ref_out) < 1e-10
    for name, g, rg in zip(["qa", "ka", "qp", "kp", "v"], grads, ref_grads, strict=True):
        assert rel_err(g, rg) < 1e-10, name


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=attention_case(), scale=st.sampled_from([1.0, 8.0]))
def test_fused_float32_matches_float64_reference_property(case, scale):
    # float32 runs the vector passes (AVX-512 / AVX2 polynomials, their scalar row tails,
    # the lazy rescaling); amplitudes scaled by 8 put scores far apart, so many exponentials
    # underflow (the phases are not scaled: float32 phase rounding would dominate)
    q, k, v, d_out = case_tensors(case)
    qa, ka, qp, kp = quadratic_parts(q, k, case["theta"])
    parts = Parts(scale * qa, ka, qp, kp)
    h, hk = case["heads"], case["h_kv"]
    kw = {"alpha": case["alpha"], "causal": case["causal"], "q_offset": case["q_offset"], "k_offset": case["k_offset"]}
    ref_out, ref_grads = run(reference_attention, parts, v, d_out, **kw)
    blocks = {"block_q": case["block_q"], "block_k": case["block_k"], "splits": case["splits"]}
    out, grads = run(fused_cpu_attention, Parts(*(t.float() for t in parts)), v.float(), d_out.float(), **kw, **blocks)
    assert out.dtype == torch.float32
    # float32 conditioning: each phase 2 pi c (qp . kp) carries a rounding error of a few
    # 2^-24 of its size, which the score multiplies by its amplitude
    dist = max(
        abs(case["k_offset"] - case["q_offset"] - case["lq"] + 1), case["k_offset"] + case["lk"] - 1 - case["q_offset"]
    )
    phase = (
        2
        * math.pi
        * max(dist, 1) ** case["alpha"]
        * (parts.qp @ parts.kp.transpose(-1, -2).repeat_interleave(h // hk, 1)).abs().max()
    )
    amp = (parts.qa @ parts.ka.transpose(-1, -2).repeat_interleave(h // hk, 1)).abs().max()
    bound = 2**-24 * float(amp * phase)
    assert rel_err(out.double(), ref_out) < 2e-5 + bound
    for name, g, rg in zip(["qa", "ka", "qp", "kp", "v"], grads, ref_grads, strict=True):
        assert rel_err(g.double(), rg) < 2e-4 + 4 * bound, name


@pytest.mark.parametrize("causal", [True, False])
def test_fused_float32_long_unaligned_gqa(causal):
    q = torch.randn(2, 6, 333, 64)
    k = torch.randn(2, 2, 517, 64)
    v = torch.randn(2, 2, 517, 64)
    d_out = torch.randn(2, 6, 333, 64)
    parts = quadratic_parts(q, k, 0.5)
    kw = {"alpha": 0.1, "causal": causal, "q_offset": 517 - 333}
    ref_out, ref_grads = run(reference_attention, parts, v, d_out, **kw)
    out, grads = run(fused_cpu_attention, parts, v, d_out, **kw)
    assert out.dtype == torch.float32
    # float32 rounding of phases up to ~2 pi * 517^0.1 * |qp.kp|: the same bound as the chunked kernel
    assert rel_err(out, ref_out) < 1e-4
    for g, rg in zip(grads, ref_grads, strict=True):
        assert rel_err(g, rg) < 1e-4


@pytest.mark.parametrize("splits", [0, 1, 3, 64])
def test_decoding_splits_equal_reference(splits):
    # one query against a long cache: keys split across threads (flash-decoding), more splits than blocks too
    q = torch.randn(1, 4, 1, 32, dtype=torch.float64)
    k, v = torch.randn(1, 2, 1000, 32, dtype=torch.float64), torch.randn(1, 2, 1000, 32, dtype=torch.float64)
    parts = quadratic_parts(q, k, 0.5)
    ref = reference_attention(parts, v, alpha=0.1, causal=True, q_offset=999)
    out = fused_cpu_attention(parts, v, alpha=0.1, causal=True, q_offset=999, splits=splits)
    assert rel_err(out, ref) < 1e-12


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 2), (6, 1), (24, 1)])
@pytest.mark.parametrize(("d", "theta"), [(24, 0.5), (64, 0.25), (136, 0.5), (288, 0.5)])
def test_float32_decoding_rows_match_float64_reference(rows, heads, kv_heads, d, theta):
    # the decoding path in float32: one task per key head holds the rows of its query heads
    # (1 to 72 here: the vector loops up to 64, BLAS beyond); head dims that leave a scalar
    # tail, split unevenly, and need several passes of accumulator registers (288 = 18
    # vectors); value rows wider than the keys'; 700 keys in blocks of 128 leave a last
    # block of 60, whole groups of 16 keys and a tail of keys one at a time
    gen = torch.Generator().manual_seed(d + rows + heads)
    q = torch.randn(2, heads, rows, d, generator=gen, dtype=torch.float64)
    k = torch.randn(2, kv_heads, 700, d, generator=gen, dtype=torch.float64)
    v = torch.randn(2, kv_heads, 700, d + 40, generator=gen, dtype=torch.float64)
    parts = quadratic_parts(q, k, theta)
    kw = {"alpha": 0.1, "causal": True, "q_offset": 700 - rows}
    ref = reference_attention(parts, v, **kw)
    out = fused_cpu_attention(Parts(*(t.float() for t in parts)), v.float(), **kw, block_k=128)
    assert out.dtype == torch.float32
    assert rel_err(out.double(), ref) < 1e-5


@pytest.mark.parametrize("rows", [1, 3, 50])
@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 2), (6, 1), (24, 1)])
def test_bfloat16_cache_read_in_place_when_decoding(rows, heads, kv_heads):
    # a bfloat16 KV cache goes to the kernel as it is (no float32 copy per step) and the
    # result equals the float64 reference on the same bfloat16 values; vector and BLAS
    # decoding paths, and 50 queries (prefill: the kernel widens the cache itself)
    gen = torch.Generator().manual_seed(rows + heads)
    q = torch.randn(1, heads, rows, 40, generator=gen).bfloat16()
    k = torch.randn(1, kv_heads, 600, 40, generator=gen).bfloat16()
    v = torch.randn(1, kv_heads, 600, 40, generator=gen).bfloat16()
    parts = quadratic_parts(q, k, 0.5)
    inputs = fc_inference_inputs(parts, v)
    assert [t.dtype for t in inputs] == [torch.float32, torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16]
    assert inputs[1].data_ptr() == k.data_ptr() and inputs[4].data_ptr() == v.data_ptr()
    kw = {"alpha": 0.1, "causal": True, "q_offset": 600 - rows}
    ref = reference_attention(quadratic_parts(q.double(), k.double(), 0.5), v.double(), **kw)
    with torch.no_grad():
        out = fused_cpu_attention(parts, v, **kw, block_k=128)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.double(), ref) < 1e-2  # the output's own bfloat16 rounding
    with torch.no_grad():
        out32, _ = torch.ops.tapa_fused_cpu.forward(*inputs, 0.1, True, 600 - rows, 0, 128, 128, 0)
    assert rel_err(out32.double(), ref) < 1e-5  # float32 arithmetic on the bfloat16 values


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_against_float32_reference(dtype):
    q, k, v, d_out = (torch.randn(2, 4, 200, 32).to(dtype) for _ in range(4))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = tapa_attention(*leaves, impl="fused")
    grads = torch.autograd.grad(out, leaves, d_out)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    ref_leaves = [t.float().requires_grad_(True) for t in (q, k, v)]
    ref = tapa_attention(*ref_leaves, impl="reference")
    ref_grads = torch.autograd.grad(ref, ref_leaves, d_out.float())
    assert rel_err(out, ref) < 1e-2
    for g, rg in zip(grads, ref_grads, strict=True):
        assert rel_err(g, rg) < 1e-2


def test_linear_and_full_phases_through_fused():
    q, k, v = (torch.randn(1, 2, 70, 8, dtype=torch.float64) for _ in range(3))
    d_out = torch.randn(1, 2, 70, 8, dtype=torch.float64)
    for parts in (linear_parts(q, k, 0.5), TapaPhase(2, 8, 0.25, "quadratic_full").double()(q, k)):
        parts = Parts(*(t.detach() for t in parts))
        ref_out, ref_grads = run(reference_attention, parts, v, d_out, alpha=0.1, causal=True)
        out, grads = run(fused_cpu_attention, parts, v, d_out, alpha=0.1, causal=True, block_q=16, block_k=32)
        assert rel_err(out, ref_out) < 1e-10
        for g, rg in zip(grads, ref_grads, strict=True):
            assert rel_err(g, rg) < 1e-10


def test_rows_without_visible_keys_output_zero_with_zero_grads():
    # keys start after the first queries: those causal rows see nothing
    parts = quadratic_parts(torch.randn(1, 2, 5, 8), torch.randn(1, 2, 9, 8), 0.5)
    v = torch.randn(1, 2, 9, 8)
    d_out = torch.randn(1, 2, 5, 8)
    out, grads = run(fused_cpu_attention, parts, v, d_out, alpha=0.1, causal=True, k_offset=3, block_q=2, block_k=4)
    ref_out, ref_grads = run(reference_attention, parts, v, d_out, alpha=0.1, causal=True, k_offset=3)
    assert out[:, :, :3].abs().max() == 0
    torch.testing.assert_close(out, ref_out)
    assert grads[0][:, :, :3].abs().max() == 0
    for g, rg in zip(grads, ref_grads, strict=True):
        assert rel_err(g, rg) < 1e-5


def test_nan_propagates():
    # a NaN in one key must reach every query that sees it, not be softened into a number
    q, k, v = torch.randn(1, 1, 40, 16), torch.randn(1, 1, 40, 16), torch.randn(1, 1, 40, 16)
    k[0, 0, 20, 3] = float("nan")
    out = fused_cpu_attention(quadratic_parts(q, k, 0.5), v, alpha=0.1, causal=True, block_q=16, block_k=16)
    assert torch.isfinite(out[0, 0, :20]).all()
    assert torch.isnan(out[0, 0, 20:]).all()


def test_auto_picks_fused_on_cpu_and_model_decoding_matches_reference():
    from tapa.attention import resolve_impl
    from tapa.model import ModelConfig, TapaLM

    assert resolve_impl("auto", 1, 4, 1, 4096, torch.device("cpu")) == "fused"
    base = {"vocab_size": 37, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "init_std": 0.3}
    ref_model = TapaLM(ModelConfig(positional="tapa", attn_impl="reference", **base)).double().eval()
    fused = TapaLM(ModelConfig(positional="tapa", attn_impl="fused", **base)).double().eval()
    fused.load_state_dict(ref_model.state_dict())
    ids = torch.randint(0, 37, (1, 300))
    full = ref_model(ids)
    cache = fused.new_cache()
    steps = [fused(ids[:, :200], cache)] + [fused(ids[:, i : i + 1], cache) for i in range(200, 300)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


def test_strided_key_views_equal_contiguous_copies():
    # the key parts are slices of the keys (row stride D, not d): read in place, same result
    q, k, v = (torch.randn(2, 4, 50, 24, dtype=torch.float64) for _ in range(3))
    views = quadratic_parts(q, k, 0.25)
    assert not views.ka.is_contiguous() and views.ka.data_ptr() == k.data_ptr()
    d_out = torch.randn(2, 4, 50, 24, dtype=torch.float64)
    leaves = [t.detach().requires_grad_(True) for t in (*views, v)]  # detach keeps the strides
    out = fused_cpu_attention(Parts(*leaves[:4]), leaves[4], alpha=0.1, causal=True, block_q=16, block_k=16)
    grads = torch.autograd.grad(out, leaves, d_out)
    copies = Parts(*(t.contiguous() for t in views))
    ref_out, ref_grads = run(fused_cpu_attention, copies, v, d_out, alpha=0.1, causal=True, block_q=16, block_k=16)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for g, rg in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, rg, rtol=0, atol=0)


def test_gradients_bit_identical_between_runs():
    # exact resume after a kill needs a deterministic backward (dq is summed over threads)
    q, k, v = (torch.randn(1, 2, 700, 32) for _ in range(3))
    d_out = torch.randn(1, 2, 700, 32)
    parts = quadratic_parts(q, k, 0.5)
    first = run(fused_cpu_attention, parts, v, d_out, alpha=0.1, causal=True, block_q=32, block_k=32)
    for _ in range(3):
        again = run(fused_cpu_attention, parts, v, d_out, alpha=0.1, causal=True, block_q=32, block_k=32)
        assert torch.equal(again[0], first[0])
        assert all(torch.equal(a, b) for a, b in zip(again[1], first[1], strict=True))


def test_build_failure_falls_back_to_chunked_with_one_line_notice(monkeypatch, capsys):
    import tapa.attention.fused_cpu as fused

    def broken() -> None:
        raise RuntimeError("Error building extension 'tapa_fused_cpu'\ng++: not found")

    monkeypatch.setattr(fused, "_state", {})
    monkeypatch.setattr(fused, "_load", broken)
    from tapa.attention import resolve_impl

    assert resolve_impl("auto", 1, 2, 4096, 4096, torch.device("cpu")) == "chunked"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "g++: not found" in err and "using the chunked kernel" in err
    assert resolve_impl("auto", 1, 2, 4096, 4096, torch.device("cpu")) == "chunked"
    assert capsys.readouterr().err == ""  # said once per process
    with pytest.raises(Exception, match="could not be built"):
        tapa_attention(*(torch.randn(1, 1, 8, 4) for _ in range(3)), impl="fused")


@pytest.mark.slow
def test_first_build_says_so_once_with_the_cache_path(tmp_path):
    """A fresh cache: one stderr line naming the build and the cache folder; a second process
    loads the cached library silently."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TAPA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    code = "from tapa.attention.fused_cpu import fused_cpu_available; assert fused_cpu_available()"
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "building the fused CPU attention kernel" in lines[0]
    assert str(tmp_path / "cache" / "kernels") in lines[0]
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and second.stderr == ""
