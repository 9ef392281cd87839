"""The Triton kernels against the reference, run on CPU tensors by Triton's interpreter,
and compiled on a GPU where there is one.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the cases run in a child
process; each prints the largest relative error of the output and of every gradient.
Skipped when triton is not installed (``pip install 'tapa[triton]'``; CI installs it); the
GPU tests are skipped without CUDA (CI has no GPU).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tapa.attention import quadratic_parts
from tapa.attention.triton_kernel import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton not installed (pip install 'tapa[triton]')")

SCRIPT = r"""
import json, sys, torch
from tapa.attention import quadratic_parts, reference_attention
from tapa.attention.phase import Parts
from tapa.attention.triton_kernel import triton_attention

def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(0.1)).item()

results = []
for case in json.loads(sys.argv[1]):
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = getattr(torch, case.get("dtype", "float32"))
    b, h, hk, d, lq, lk = case["b"], case["h"], case["hk"], case["d"], case["lq"], case["lk"]
    q = torch.randn(b, h, lq, d, generator=gen)
    k = torch.randn(b, hk, lk, d, generator=gen)
    v = torch.randn(b, hk, lk, d, generator=gen)
    d_out = torch.randn(b, h, lq, d, generator=gen)
    # the oracle sees the same (dtype-representable) values: what remains is the kernel's own rounding
    q, k, v, d_out = (t.to(dtype).float() for t in (q, k, v, d_out))
    if case.get("nan_key") is not None:
        k[0, 0, case["nan_key"], 0] = float("nan")
    kw = {"alpha": case["alpha"], "causal": case["causal"], "q_offset": case["q_offset"], "k_offset": case["k_offset"]}
    # the kernel's inputs are the parts in its dtype; the oracle gets the same rounded parts in float64
    if case.get("mixed"):  # as a half-precision model passes them: float32 query parts, half keys
        inputs = [*quadratic_parts(q.to(dtype), k.to(dtype), case["theta"]), v.to(dtype)]
    else:
        inputs = [t.to(dtype) for t in (*quadratic_parts(q, k, case["theta"]), v)]
    leaves = [t.double().requires_grad_(True) for t in inputs]
    ref = reference_attention(Parts(*leaves[:4]), leaves[4], **kw)
    if case.get("nan_key") is not None:
        out = triton_attention(quadratic_parts(q, k, case["theta"]), v, block_m=16, block_n=16, **kw)
        results.append({"nan_rows": torch.isnan(out[0, 0]).any(-1).tolist()})
        continue
    ref_grads = torch.autograd.grad(ref, leaves, d_out.double())
    dev = case.get("device", "cpu")  # "cuda": compiled by Triton for the GPU, not interpreted
    parts = [t.to(dev).requires_grad_(True) for t in inputs]
    out = triton_attention(Parts(*parts[:4]), parts[4], block_m=case["bm"], block_n=case["bn"], **kw)
    grads = torch.autograd.grad(out, parts, d_out.to(dev, dtype))
    errors = [rel(g.cpu(), r) for g, r in zip(grads, ref_grads)]
    out = out.cpu()
    dtypes = [str(t.dtype) for t in (out, *grads)]
    results.append({"dtype": str(out.dtype), "dtypes": dtypes, "out": rel(out, ref), "grads": errors})
print(json.dumps(results))
"""


def run_cases(cases: list[dict], interpret: bool = True) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=900
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def case(**kw) -> dict:
    base = {"b": 1, "h": 2, "hk": 2, "d": 16, "theta": 0.5, "alpha": 0.1, "lq": 40, "lk": 40, "causal": True}
    return {**base, "q_offset": 0, "k_offset": 0, "bm": 16, "bn": 16, "seed": 0, **kw}


CASES = {
    "causal square": case(),
    "non-causal": case(causal=False, seed=1),
    "causal, Lq < Lk, KV-cache offset": case(lq=9, lk=45, q_offset=36, seed=2),
    "decode one query": case(lq=1, lk=50, q_offset=49, seed=3),
    "keys start after queries": case(lq=20, lk=24, k_offset=5, seed=4),
    "grouped-query (3 heads per key head), ragged": case(h=6, hk=2, lq=37, lk=37, seed=5),
    "batch 2, head dim 24, theta 0.25, alpha 0.5": case(b=2, d=24, theta=0.25, alpha=0.5, lq=33, lk=33, seed=6),
    "non-causal offsets, alpha 1": case(causal=False, lq=17, lk=30, q_offset=7, alpha=1.0, seed=7),
    "head dim 64, block 32": case(d=64, lq=70, lk=70, bm=32, bn=32, seed=8),
}


def test_triton_interpreter_matches_reference_float32():
    results = run_cases(list(CASES.values()))
    for name, res in zip(CASES, results, strict=True):
        assert res["dtype"] == "torch.float32", name
        # float32 phases: the same bound as the other float32 kernels against the float64 oracle
        assert res["out"] < 1e-4, (name, res)
        assert max(res["grads"]) < 1e-4, (name, res)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_triton_interpreter_half_precision_within_tolerance(dtype):
    """Half-precision inputs with float32 distances, phases, cosine and accumulators: the
    oracle gets the same rounded inputs, so what is left is the rounding of the outputs and
    gradients, a few units of the dtype's epsilon. The third case puts queries 2000
    positions past their keys with alpha 0.5: phases reach thousands of radians, where a
    phase rounded to the input's precision would be off by whole radians."""
    eps = torch.finfo(getattr(torch, dtype)).eps  # 2^-7 for bfloat16, 2^-10 for float16
    far = case(dtype=dtype, alpha=0.5, lq=8, lk=40, q_offset=2000, seed=10)
    results = run_cases([case(dtype=dtype, seed=9), case(dtype=dtype, h=4, hk=1, lq=5, lk=40, q_offset=35), far])
    for res in results:
        assert res["dtype"] == f"torch.{dtype}"
        assert res["out"] < 2 * eps and max(res["grads"]) < 4 * eps, res


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_triton_interpreter_float32_queries_with_half_keys(dtype):
    """What a half-precision model passes (float32 query parts, key parts that are views of
    half-precision keys): computed with half-precision products, the phase part split in two,
    never by casting the keys to float32. The errors stay at the dtype's rounding, also where
    phases reach thousands of radians (2000 positions, alpha 0.5); the query gradients come
    back in float32, the key and value gradients in the keys' dtype."""
    eps = torch.finfo(getattr(torch, dtype)).eps
    cases = [
        case(dtype=dtype, mixed=True, seed=11),
        case(dtype=dtype, mixed=True, h=4, hk=2, lq=9, lk=45, q_offset=36, seed=12),
        case(dtype=dtype, mixed=True, alpha=0.5, lq=8, lk=40, q_offset=2000, seed=13),
    ]
    for res in run_cases(cases):
        half = f"torch.{dtype}"
        assert res["dtypes"] == [half, "torch.float32", half, "torch.float32", half, half], res
        assert res["out"] < 2 * eps and max(res["grads"]) < 4 * eps, res


def test_split_queries_only_for_float32_queries_with_half_keys():
    from tapa.attention.triton_kernel import split_queries

    q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    for half in (torch.bfloat16, torch.float16):
        assert split_queries(quadratic_parts(q.to(half), k.to(half), 0.5), k.to(half))
        assert not split_queries(quadratic_parts(q.to(half), k.to(half), 0.5), k)  # float32 values
    assert not split_queries(quadratic_parts(q, k, 0.5), k)  # all float32
    assert not split_queries(quadratic_parts(q.double(), k.to(torch.bfloat16), 0.5), k.to(torch.bfloat16))


def test_triton_interpreter_propagates_nan():
    (res,) = run_cases([case(h=1, hk=1, nan_key=20)])
    assert res["nan_rows"] == [False] * 20 + [True] * 20


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (the interpreter tests above run on CPU)")


@cuda
def test_triton_gpu_matches_reference_float32():
    """The same case families compiled for the GPU, plus the wrapper's default tile sizes on
    longer, ragged inputs (bm / bn None) where the interpreter would be too slow."""
    cases = [{**c, "device": "cuda"} for c in CASES.values()]
    cases += [
        case(device="cuda", d=64, lq=1000, lk=1000, bm=None, bn=None, seed=10),
        case(device="cuda", d=128, h=8, hk=2, lq=777, lk=777, bm=None, bn=None, seed=11),
        case(device="cuda", d=128, lq=3, lk=1500, q_offset=1497, bm=None, bn=None, seed=12),
    ]
    for res in run_cases(cases, interpret=False):
        assert res["dtype"] == "torch.float32"
        assert res["out"] < 1e-4 and max(res["grads"]) < 1e-4, res


@cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_triton_gpu_half_precision_within_tolerance(dtype):
    cases = [
        case(device="cuda", dtype=dtype, d=64, lq=1000, lk=1000, bm=None, bn=None, seed=13),
        case(device="cuda", dtype=dtype, d=128, h=4, hk=1, lq=5, lk=900, q_offset=895, bm=None, bn=None, seed=14),
        # a half-precision model's inputs: float32 query parts, half keys (the split phase product)
        case(device="cuda", dtype=dtype, mixed=True, d=64, lq=1000, lk=1000, bm=None, bn=None, seed=15),
        case(device="cuda", dtype=dtype, mixed=True, d=128, alpha=0.5, lq=64, lk=900, q_offset=5000, bm=None, bn=None),
    ]
    for res in run_cases(cases, interpret=False):
        assert res["dtype"] == f"torch.{dtype}"
        assert res["out"] < 2e-2 and max(res["grads"]) < 5e-2, res
