"""RoPE -> TAPA conversions: the lowfreq conversion's amplitude equals RoPE's low-frequency
terms where its docstring says so, computed here from the original model's q and k."""

import math

import pytest
import torch

from tapa.errors import ConfigError
from tapa.model import ModelConfig, TapaLM
from tapa.model.conversion import convert_to_tapa, lowfreq_order
from tapa.positional import apply_rotary
from tapa.theory.scores import capture_qk


def rope_model(**kw):
    torch.manual_seed(0)
    config = ModelConfig(
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        positional="rope",
        rope_base=10000.0,
        max_seq_len=64,
        init_std=0.1,
        **kw,
    )
    return TapaLM(config).eval()


@pytest.mark.parametrize("interleaved", [False, True])
def test_lowfreq_amplitude_equals_ropes_low_frequency_terms(interleaved):
    model = rope_model(rope_interleaved=interleaved)
    tapa = convert_to_tapa(model, "lowfreq", phase_init=0.01)
    ids = torch.randint(0, 259, (1, 48), generator=torch.Generator().manual_seed(1))
    d = 16
    order, d_a = lowfreq_order(model.config, 0.5)
    low = sorted(order[:d_a])
    # the pairs kept are the slowest: every kept coordinate's frequency is below every dropped one's
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2).double() / d)
    pair_of = (lambda c: c // 2) if interleaved else (lambda c: c % (d // 2))
    kept = {pair_of(c) for c in low}
    assert max(inv_freq[sorted(kept)]) < min(inv_freq[[i for i in range(d // 2) if i not in kept]])
    (q0, k0), _ = capture_qk(model, ids)  # layer 0, un-rotated q and k of the RoPE model
    (q1, k1), _ = capture_qk(tapa, ids)
    k0, k1 = k0.repeat_interleave(2, 1), k1.repeat_interleave(2, 1)
    parts = tapa.blocks[0].attn.phase(q1, k1)
    amp = parts.qa.double() @ parts.ka.double().transpose(-1, -2)  # what TAPA multiplies the cosine by
    # exactly the un-rotated dot product over the kept pairs, / sqrt(D): RoPE's terms at distance 0
    want0 = q0[..., low].double() @ k0[..., low].double().transpose(-1, -2) / math.sqrt(d)
    torch.testing.assert_close(amp, want0, rtol=1e-5, atol=1e-6)
    # and, at distance m - n, RoPE's own low-frequency terms within the rotation of the fastest kept pair
    cos, sin = model.rope(torch.arange(48))
    qr, kr = apply_rotary(q0, cos, sin, interleaved), apply_rotary(k0, cos, sin, interleaved)
    rope_low = qr[..., low].double() @ kr[..., low].double().transpose(-1, -2) / math.sqrt(d)
    dist = (torch.arange(48)[:, None] - torch.arange(48)[None, :]).abs().double()
    w = float(max(inv_freq[sorted(kept)]))
    norms = q0[..., low].double().norm(dim=-1)[..., None] * k0[..., low].double().norm(dim=-1)[..., None, :]
    bound = norms / math.sqrt(d) * 2 * (dist * w).clamp(max=2.0) + 1e-6  # |1 - cos| + |sin| <= 2 |x|
    assert ((amp - rope_low).abs() <= bound).all()
    # the phase starts near 0: |q_P . k_P| is phase_init times its unscaled value
    assert (parts.qp.double() @ parts.kp.double().transpose(-1, -2)).abs().max() < 0.05


def test_lowfreq_keeps_every_other_weight_and_the_value_path():
    model = rope_model()
    tapa = convert_to_tapa(model, "lowfreq")
    for (name, a), (_, b) in zip(model.state_dict().items(), tapa.state_dict().items(), strict=True):
        if ".wq." in name or ".wk." in name:
            assert a.shape == b.shape and not torch.equal(a, b), name
        else:
            assert torch.equal(a, b), name
    assert tapa.config.positional == "tapa" and tapa.config.rope_scaling is None


def test_naive_conversion_keeps_the_weights():
    model = rope_model()
    tapa = convert_to_tapa(model, "naive", phase_scale=1.0)
    assert tapa.config.tapa_phase_scale == 1.0
    for (name, a), (_, b) in zip(model.state_dict().items(), tapa.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_conversion_errors():
    with pytest.raises(ConfigError, match="not RoPE; nothing to convert"):
        convert_to_tapa(TapaLM(ModelConfig(d_model=32, n_layers=1, n_heads=2)))
    with pytest.raises(ConfigError, match="must be even"):
        convert_to_tapa(rope_model(), "lowfreq", theta=0.5625)  # D_A = 9 of 16: a pair would be split
