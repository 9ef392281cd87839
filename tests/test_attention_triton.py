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
    ref_parts = quadratic_parts(q.double(), k.double(), case["theta"])
    leaves = [t.detach().clone().requires_grad_(True) for t in (*ref_parts, v.double())]
    ref = reference_attention(Parts(*leaves[:4]), leaves[4], **kw)
    if case.get("nan_key") is not None:
        out = triton_attention(quadratic_parts(q, k, case["theta"]), v, block_m=16, block_n=16, **kw)
        results.append({"nan_rows": torch.isnan(out[0, 0]).any(-1).tolist()})
        continue
    ref_grads = torch.autograd.grad(ref, leaves, d_out.double())
    dev = case.get("device", "cpu")  # "cuda": compiled by Triton for the GPU, not interpreted
    qd, kd, vd = (t.to(dev) for t in (q, k, v))
    parts = [t.to(dtype).detach().clone().requires_grad_(True) for t in (*quadratic_parts(qd, kd, case["theta"]), vd)]
    out = triton_attention(Parts(*parts[:4]), parts[4], block_m=case["bm"], block_n=case["bn"], **kw)
    grads = torch.autograd.grad(out, parts, d_out.to(dev, dtype))
    errors = [rel(g.cpu(), r) for g, r in zip(grads, ref_grads)]
    out = out.cpu()
    results.append({"dtype": str(out.dtype), "out": rel(out, ref), "grads": errors})
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


def test_triton_interpreter_bfloat16_within_bf16_tolerance():
    results = run_cases([case(dtype="bfloat16", seed=9), case(dtype="bfloat16", h=4, hk=1, lq=5, lk=40, q_offset=35)])
    for res in results:
        assert res["dtype"] == "torch.bfloat16"
        assert res["out"] < 2e-2 and max(res["grads"]) < 5e-2, res


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
    ]
    for res in run_cases(cases, interpret=False):
        assert res["dtype"] == f"torch.{dtype}"
        assert res["out"] < 2e-2 and max(res["grads"]) < 5e-2, res
