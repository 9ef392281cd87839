"""The phase scale s of cos(s |m-n|^alpha q_P.k_P / sqrt(D_P)) (2 pi in the paper's Eq. 12):
every kernel against an elementwise float64 formula in values and gradients, the model
config's validation and serialisation, and what s = 0 means (cos = 1: NoPE on the amplitude half)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tapa.attention import TWO_PI, TapaPhase, tapa_attention, tapa_scores
from tapa.attention.triton_kernel import triton_available
from tapa.errors import ConfigError
from tapa.model import ModelConfig, TapaLM
from tapa.train.config import TrainConfig


def naive_attention(q, k, v, alpha, theta, scale, causal=True, q_offset=0):
    """softmax over keys of amp * cos(scale * |m-n|^alpha * prod), written from the formula in float64."""
    q, k, v = q.double(), k.double(), v.double()
    d = q.shape[-1]
    d_a = round(theta * d)
    d_p = d - d_a
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    amp = q[..., :d_a] @ k[..., :d_a].transpose(-1, -2) / math.sqrt(d_a)
    prod = q[..., d_a:] @ k[..., d_a:].transpose(-1, -2) / math.sqrt(d_p)
    m = torch.arange(q.shape[2], dtype=torch.float64)[:, None] + q_offset
    n = torch.arange(k.shape[2], dtype=torch.float64)[None, :]
    scores = amp * torch.cos(scale * (m - n).abs() ** alpha * prod)
    if causal:
        scores = scores.masked_fill(n > m, float("-inf"))
    return scores.softmax(-1) @ v


def inputs(seed, b=2, h=4, hk=2, lq=23, lk=23, d=16):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, lq, d, generator=gen)
    k = torch.randn(b, hk, lk, d, generator=gen)
    v = torch.randn(b, hk, lk, d, generator=gen)
    return q, k, v


@pytest.mark.parametrize("impl", ["reference", "chunked", "fused"])
@pytest.mark.parametrize("scale", [0.0, 1.0, 3.7, TWO_PI])
def test_every_cpu_kernel_matches_the_formula_with_its_gradients(impl, scale):
    q, k, v = inputs(int(scale * 10))
    kw = {"alpha": 0.5, "theta": 0.5}
    leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    want = naive_attention(*leaves, scale=scale, **kw)
    g_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, leaves, g_out)
    got_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    extra = {"block_size": 8} if impl == "chunked" else {}
    got = tapa_attention(*got_leaves, phase_scale=scale, impl=impl, **kw, **extra)
    got_grads = torch.autograd.grad(got, got_leaves, g_out.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


def test_the_scale_changes_the_output_and_scores_follow_it():
    """Not a no-op: s = 1, 2 pi and 0 give different attention, and tapa_scores(s) is amp * cos(s ...)."""
    q, k, v = inputs(3)
    outs = [tapa_attention(q, k, v, alpha=0.5, phase_scale=s) for s in (0.0, 1.0, TWO_PI)]
    assert (outs[0] - outs[1]).abs().max() > 1e-3 and (outs[1] - outs[2]).abs().max() > 1e-3
    kr = k.repeat_interleave(2, 1)
    off = tapa_scores(q, k, alpha=0.5, phase_scale=0.0)
    amp = q[..., :8] @ kr[..., :8].transpose(-1, -2) / math.sqrt(8)
    torch.testing.assert_close(off, amp)  # s = 0: cos = 1 at every distance, the amplitude alone


def test_phase_off_gives_the_phase_half_no_gradient_from_scores():
    """s = 0: the scores ignore q_P and k_P, so the only gradient k_P gets is through v."""
    q, k, v = inputs(4, hk=4)
    q.requires_grad_(True)
    out = tapa_attention(q, k, v, alpha=0.1, phase_scale=0.0)
    (g,) = torch.autograd.grad(out.square().sum(), q)
    assert g[..., 8:].abs().max() == 0 and g[..., :8].abs().max() > 0


@pytest.mark.parametrize("phase", ["linear", "quadratic_full"])
def test_other_phases_scale_their_phase_by_s_over_2pi(phase):
    """linear and quadratic_full: the query phase part at scale s is s / 2 pi times the 2 pi one."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    base, scaled = TapaPhase(2, 8, 0.5, phase), TapaPhase(2, 8, 0.5, phase, phase_scale=1.5)
    scaled.load_state_dict(base.state_dict())
    a, b = base(q, k), scaled(q, k)
    torch.testing.assert_close(b.qp, a.qp * (1.5 / TWO_PI))
    for x, y in ((a.qa, b.qa), (a.ka, b.ka), (a.kp, b.kp)):
        assert torch.equal(x, y)


@pytest.mark.skipif(not triton_available(), reason="triton not installed (pip install 'tapa[triton]')")
def test_triton_interpreter_follows_the_phase_scale():
    script = r"""
import json, math, torch
from tapa.attention import quadratic_parts, reference_attention
from tapa.attention.phase import Parts
from tapa.attention.triton_kernel import triton_attention
torch.manual_seed(0)
q, k, v = torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16)
errors = []
for s in (0.0, 1.0, 3.7):
    parts = quadratic_parts(q, k, 0.5, s)
    ref = reference_attention(Parts(*(t.double() for t in parts)), v.double(), alpha=0.5, causal=True)
    out = triton_attention(parts, v, alpha=0.5, causal=True, block_m=16, block_n=16)
    errors.append((out.double() - ref).abs().max().item())
print(json.dumps(errors))
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert max(json.loads(res.stdout.strip().splitlines()[-1])) < 1e-4


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan"), "abc", True])
def test_config_refuses_a_bad_phase_scale(bad):
    with pytest.raises(ConfigError, match="tapa_phase_scale: must be a finite number >= 0"):
        ModelConfig(tapa_phase_scale=bad)


def test_phase_scale_only_applies_to_tapa():
    with pytest.raises(ConfigError, match="tapa_phase_scale: only applies to positional='tapa'"):
        ModelConfig(positional="rope", tapa_phase_scale=1.0)


def test_default_scale_is_not_written_so_stage_hashes_stay():
    """The default (2 pi) is left out of the JSON: configs and stage keys from before the field are unchanged."""
    assert "tapa_phase_scale" not in ModelConfig().to_dict()
    assert "tapa_phase_scale" not in TrainConfig().to_dict()["model"]
    config = ModelConfig(tapa_phase_scale=1)
    assert config.to_dict()["tapa_phase_scale"] == 1.0
    assert ModelConfig.from_json(config.to_json()) == config


def test_model_forward_uses_the_configured_scale():
    """A TapaLM with s = 1 equals one whose phase query weights are 1 / 2 pi times smaller at s = 2 pi."""
    torch.manual_seed(0)
    unscaled = TapaLM(ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=32, tapa_phase_scale=1.0))
    paper = TapaLM(ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=32))
    state = unscaled.state_dict()
    for layer in range(2):  # rows of wq that produce each head's phase half (coordinates 8..15 of 16)
        w = state[f"blocks.{layer}.attn.wq.weight"].clone().view(2, 16, 32)
        w[:, 8:] /= TWO_PI
        state[f"blocks.{layer}.attn.wq.weight"] = w.view(32, 32)
    paper.load_state_dict(state)
    ids = torch.randint(0, 259, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(unscaled.double()(ids), paper.double()(ids), rtol=0, atol=1e-10)
