"""The Llama-style model: KV-cache decoding, position-shift invariance, overfitting, generation."""

import pytest
import torch

from tapa.model import ModelConfig, TapaLM
from tapa.model.cache import KVCache

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
SCHEMES = {
    "tapa": {"positional": "tapa"},
    "tapa-alpha1": {"positional": "tapa", "tapa_alpha": 1.0, "tapa_theta": 0.25},
    "tapa-full": {"positional": "tapa", "tapa_phase": "quadratic_full"},
    "tapa-linear": {"positional": "tapa", "tapa_phase": "linear"},
    "tapa-chunked": {"positional": "tapa", "attn_impl": "chunked"},
    "rope": {"positional": "rope"},
    "rope-interleaved": {"positional": "rope", "rope_interleaved": True},
    "rope-partial": {"positional": "rope", "partial_rotary_factor": 0.5},
    "rope-yarn": {"positional": "rope", "rope_scaling": YARN},
    "rope-pi": {"positional": "rope", "rope_scaling": {"rope_type": "linear", "factor": 8.0}},
    "rope-llama3": {
        "positional": "rope",
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },
    "alibi": {"positional": "alibi"},
    "nope": {"positional": "nope"},
}


def tiny(**kw) -> TapaLM:
    """A float64 model (kernels keep float64), so equivalences hold to ~1e-10 and a wrong
    position or mask cannot hide in float32 rounding; a large init makes attention peaked."""
    base = {"vocab_size": 37, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "init_std": 0.3}
    return TapaLM(ModelConfig(**{**base, **kw})).double().eval()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_kv_cache_decoding_equals_full_forward(scheme):
    model = tiny(**SCHEMES[scheme])
    ids = torch.randint(0, 37, (2, 24))
    full = model(ids)
    cache = model.new_cache()
    steps = [model(ids[:, :9], cache), model(ids[:, 9:13], cache)]
    steps += [model(ids[:, i : i + 1], cache) for i in range(13, 24)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_kv_cache_decoding_without_grad_equals_full_forward(scheme):
    """Inference decoding writes into the cache's preallocated buffers (the path above, with
    autograd on, concatenates): both must give the full forward's logits."""
    model = tiny(**SCHEMES[scheme])
    ids = torch.randint(0, 37, (2, 24))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        steps = [model(ids[:, :9], cache), model(ids[:, 9:13], cache)]
        steps += [model(ids[:, i : i + 1], cache) for i in range(13, 24)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-9)


def test_kv_cache_buffers_equal_concatenation_across_growth():
    """Appends of 1..40 rows, past several regrowths of the buffers: the cache always returns
    the concatenation of everything appended, and views returned earlier keep their values."""
    torch.manual_seed(0)
    cache = KVCache(n_layers=2)
    ref_k, ref_v, earlier = [], [], []
    for step in range(60):
        n = 1 + (step * 7) % 40
        k, v = torch.randn(2, 3, n, 5), torch.randn(2, 3, n, 4)
        ref_k.append(k)
        ref_v.append(v)
        got_k, got_v = cache.update(1, k, v)
        assert torch.equal(got_k, torch.cat(ref_k, dim=2)) and torch.equal(got_v, torch.cat(ref_v, dim=2))
        earlier.append((got_k, torch.cat(ref_k, dim=2)))
    assert cache.keys[1].shape[2] > 1000  # the buffers grew several times
    assert all(torch.equal(view, want) for view, want in earlier)


def test_dynamic_ntk_cache_matches_within_original_length():
    # dynamic NTK changes its base once the length passes max_position_embeddings, so keys
    # cached earlier were rotated with another base (as in every implementation); within the
    # original length it must match exactly
    scaling = {"rope_type": "dynamic", "factor": 4.0, "max_position_embeddings": 64}
    model = tiny(positional="rope", rope_scaling=scaling)
    ids = torch.randint(0, 37, (1, 20))
    cache = model.new_cache()
    steps = [model(ids[:, :5], cache)] + [model(ids[:, i : i + 1], cache) for i in range(5, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), model(ids), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scheme", ["tapa", "tapa-alpha1", "tapa-full", "tapa-chunked", "rope", "rope-yarn", "alibi"])
def test_logits_unchanged_when_all_positions_shift(scheme):
    model = tiny(**SCHEMES[scheme])
    ids = torch.randint(0, 37, (2, 16))
    base = model(ids)
    shifted = model(ids, start_pos=1000)
    # RoPE angles are float32 (as in transformers): m * theta at m ~ 1000 carries ~1e-4 rad of rounding
    tol = 2e-3 if scheme.startswith("rope") else 1e-9
    torch.testing.assert_close(shifted, base, rtol=tol, atol=tol)
    cache = model.new_cache()
    model(ids[:, :10], cache, start_pos=1000)
    tail = model(ids[:, 10:], cache)
    torch.testing.assert_close(tail, base[:, 10:], rtol=tol, atol=tol)


@pytest.mark.parametrize("scheme", ["tapa", "rope", "alibi"])
def test_positions_matter(scheme):
    # guards the two tests above against a model that ignores positions altogether
    model = tiny(**SCHEMES[scheme])
    ids = torch.randint(0, 37, (1, 12))
    swapped = ids.clone()
    swapped[0, 2], swapped[0, 7] = ids[0, 7], ids[0, 2]
    assert not torch.allclose(model(ids)[:, -1], model(swapped)[:, -1], atol=1e-3)


@pytest.mark.parametrize("scheme", ["tapa", "tapa-linear", "rope", "alibi", "nope"])
def test_model_overfits_one_batch(scheme):
    torch.manual_seed(0)
    model = TapaLM(ModelConfig(vocab_size=37, d_model=64, n_layers=2, n_heads=4, **SCHEMES[scheme]))
    ids = torch.randint(0, 37, (4, 33))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0  # ~ ln(37) = 3.6 at initialisation
    assert loss.item() < first / 10, f"{first:.3f} -> {loss.item():.3f}"


def test_greedy_generate_equals_step_by_step_argmax_without_cache():
    model = tiny(positional="tapa")
    prompt = torch.randint(0, 37, (2, 5))
    out = model.generate(prompt, 8)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


def test_sampling_top_k_and_temperature():
    model = tiny(positional="rope")
    prompt = torch.randint(0, 37, (3, 4))
    greedy = model.generate(prompt, 6)
    assert torch.equal(model.generate(prompt, 6, temperature=1.0, top_k=1), greedy)
    a = model.generate(prompt, 6, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, 6, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # every sampled token is among the 5 most likely ones given its prefix
    logits = model(a[:, :-1])
    for pos in range(prompt.shape[1] - 1, a.shape[1] - 1):
        top5 = logits[:, pos].topk(5, dim=-1).indices
        assert bool((top5 == a[:, pos + 1, None]).any(-1).all())


def test_generate_stops_at_eos():
    model = tiny(positional="nope")
    prompt = torch.randint(0, 37, (1, 3))
    first = model.generate(prompt, 1)[0, -1].item()
    out = model.generate(prompt, 10, eos_id=first)
    assert out.shape[1] == 4 and out[0, -1].item() == first


def test_parameter_count_matches_closed_form():
    c = ModelConfig(vocab_size=100, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=96)
    model = TapaLM(c)
    hd = 16
    per_layer = 64 * 64 + 2 * 64 * (2 * hd) + 64 * 64 + 3 * 64 * 96 + 2 * 64
    assert model.num_parameters() == 100 * 64 + 3 * per_layer + 64
    assert "M parameters" in model.describe()


@pytest.mark.parametrize("scheme", ["tapa", "tapa-chunked", "rope", "alibi"])
def test_kv_cache_float32_default_init(scheme):
    model = TapaLM(ModelConfig(vocab_size=37, d_model=32, n_layers=2, n_heads=4, **SCHEMES[scheme])).eval()
    ids = torch.randint(0, 37, (2, 40))
    cache = model.new_cache()
    steps = [model(ids[:, :30], cache)] + [model(ids[:, i : i + 1], cache) for i in range(30, 40)]
    torch.testing.assert_close(torch.cat(steps, 1), model(ids), rtol=1e-4, atol=1e-5)


def _llama_state_dict(model: TapaLM) -> dict[str, torch.Tensor]:
    """Our weights under transformers' Llama names (an independent model to compare with)."""
    names = {
        "attn.wq": "self_attn.q_proj",
        "attn.wk": "self_attn.k_proj",
        "attn.wv": "self_attn.v_proj",
        "attn.wo": "self_attn.o_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "ffn.gate": "mlp.gate_proj",
        "ffn.up": "mlp.up_proj",
        "ffn.down": "mlp.down_proj",
    }
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            for ours, theirs in names.items():
                key = key.replace(f".{ours}.", f".{theirs}.")
            key = "model.layers." + key.removeprefix("blocks.")
        else:
            key = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}.get(key, key)
        out[key] = value
    return out


def test_explicit_head_dim_matches_transformers_llama():
    """head_dim decoupled from d_model / n_heads (inner width n_heads x head_dim = 96 != 32),
    with GQA: the same logits as transformers' LlamaForCausalLM given the same weights."""
    transformers = pytest.importorskip("transformers")
    config = ModelConfig(
        positional="rope",
        vocab_size=37,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=24,
        ffn_hidden=48,
        tie_embeddings=False,
        init_std=0.2,
    )
    assert config.head_size == 24 and "head_dim" in config.to_dict()
    ours = TapaLM(config).double().eval()
    hf_config = transformers.LlamaConfig(
        vocab_size=37,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_base,
        max_position_embeddings=config.max_seq_len,
        tie_word_embeddings=False,
        attention_bias=False,
    )
    theirs = transformers.LlamaForCausalLM(hf_config).double().eval()
    missing, unexpected = theirs.load_state_dict(_llama_state_dict(ours), strict=False)
    assert not unexpected and all("rotary_emb" in k for k in missing)
    ids = torch.randint(0, 37, (2, 19))
    with torch.no_grad():
        # both compute RoPE angles in float32, in different orders: ~1e-6 of rounding
        torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=0, atol=1e-5)


def test_head_dim_default_is_derived_and_not_written():
    config = ModelConfig(d_model=64, n_heads=4)
    assert config.head_size == 16 and "head_dim" not in config.to_dict()
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(Exception, match=r"n_heads: 3 does not divide d_model=64; change one, or set head_dim"):
        ModelConfig(d_model=64, n_heads=3)
    assert ModelConfig(d_model=64, n_heads=3, head_dim=16).head_size == 16


@pytest.mark.parametrize(
    "kw",
    [
        {"positional": "rope"},
        {
            "positional": "rope",
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
            "partial_rotary_factor": 0.5,
        },
        {"positional": "nope", "n_kv_heads": 1},
        {"positional": "alibi", "n_heads": 3, "n_kv_heads": 1},
        {"positional": "tapa", "n_kv_heads": 1},
        {"positional": "tapa", "tapa_phase": "linear", "tapa_phase_scale": 1.0},
    ],
)
def test_a_layers_score_methods_give_its_forward_pass(kw):
    """softmax(causal score_matrix) @ v through W_o equals the layer's fast forward pass (SDPA or
    the TAPA kernels), and score_pairs equals score_matrix at the sampled pairs: one statement
    of each scheme's scores that the theory and diagnostics tools can trust."""
    from tapa.attention.reference import expand_heads

    torch.manual_seed(0)
    config = ModelConfig(**{"vocab_size": 40, "d_model": 48, "n_layers": 1, "n_heads": 2, "max_seq_len": 64, **kw})
    model = TapaLM(config).eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 24, config.d_model)
    pos = torch.arange(24)
    with torch.no_grad():
        fast = attn(x, 0, rope_tables=model.rope(pos) if model.rope is not None else None)
        q, k, v = (
            attn._heads(x, attn.wq, attn.n_heads),
            attn._heads(x, attn.wk, attn.n_kv),
            attn._heads(x, attn.wv, attn.n_kv),
        )
        scores = attn.score_matrix(q, k, pos, pos, model.rope)
        probs = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf")).softmax(-1)
        slow = attn.wo((probs @ expand_heads(v, attn.n_heads)).transpose(1, 2).reshape(2, 24, -1))
        torch.testing.assert_close(slow, fast, atol=2e-5, rtol=1e-4)
        m, n = torch.tensor([5, 23, 23, 7, 0]), torch.tensor([5, 0, 22, 2, 0])
        pairs = attn.score_pairs(q[:, :, m], k[:, :, n], m, n, model.rope)
        torch.testing.assert_close(pairs, scores[:, :, m, n], atol=1e-5, rtol=1e-5)
