"""Hugging Face interop: export a tapa RoPE run to a transformers folder, import Llama /
Mistral / Qwen2 folders built locally by transformers, RoPE configs parsed as transformers
parses them, round trips, bad input."""

import json
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tapa.cli import main  # noqa: E402
from tapa.data.tokenizer import Bytes, HFTokenizer  # noqa: E402
from tapa.hf.config import rope_from_hf  # noqa: E402
from tapa.hf.importer import load_hf_model  # noqa: E402
from tapa.model import ModelConfig, TapaLM, load_pretrained, save_pretrained  # noqa: E402

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
EXPORTS = {
    "tied": {},
    "untied-gqa-headdim": {"tie_embeddings": False, "n_kv_heads": 1, "head_dim": 24},
    "yarn": {"rope_scaling": YARN, "max_seq_len": 128},
    "llama3-base": {"rope_scaling": LLAMA3, "rope_base": 5e5},
    "pi": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "attention-bias": {"attention_bias": True},
    "qwen2-bias": {"qkv_bias": True},
}


def tapa_run(tmp_path, tokenizer="byte", **kw):
    config = ModelConfig(positional="rope", vocab_size=259, d_model=32, n_layers=2, n_heads=2, init_std=0.2, **kw)
    torch.manual_seed(0)
    model = TapaLM(config)
    with torch.no_grad():  # non-zero biases, so a dropped bias cannot pass
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.2)
    run = tmp_path / "run"
    save_pretrained(model, run)
    if tokenizer == "bpe":
        tok = HFTokenizer.train_bpe(["the quick brown fox jumps over the lazy dog " * 40], 300)
        model_vocab = tok.vocab_size
        assert model_vocab <= 300
        tok.save(run)
    else:
        Bytes().save(run)
    return model.eval(), run


@pytest.mark.parametrize("case", list(EXPORTS))
def test_export_loads_in_transformers_with_equal_logits_and_greedy_generation(tmp_path, case):
    model, run = tapa_run(tmp_path, **EXPORTS[case])
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    expected_class = "Qwen2ForCausalLM" if case == "qwen2-bias" else "LlamaForCausalLM"
    assert type(hf).__name__ == expected_class
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-5)
        ours = model.generate(ids[:1, :12], 10, eos_id=257)  # generation_config.json names 257 as eos
        theirs = hf.generate(ids[:1, :12], max_new_tokens=10, do_sample=False, pad_token_id=258)
    assert torch.equal(ours, theirs)
    # and back: export -> import is bit-exact
    back = tmp_path / "back"
    assert main(["import-hf", str(out), "--out", str(back)]) == 0
    again = load_pretrained(back)
    assert again.config.to_dict() == {**model.config.to_dict(), "init_std": again.config.init_std}
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_byte_tokenizer_exports_with_the_same_ids(tmp_path):
    _, run = tapa_run(tmp_path)
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Emma Woodhouse, handsome, clever — and rich 😀\n\tend"
    assert tok(text, add_special_tokens=False)["input_ids"] == Bytes().encode(text)
    assert tok.decode(Bytes().encode(text)) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (256, 257, 258)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["rope_parameters"]["rope_type"] == "default"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 257


def test_bpe_tokenizer_exports_with_declared_specials(tmp_path):
    _, run = tapa_run(tmp_path, tokenizer="bpe")
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = HFTokenizer.from_file(run / "tokenizer.json")
    text = "the lazy fox, quick and brown"
    assert tok(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert tok.eos_token == "<|eos|>" and tok.eos_token_id == ours.eos_id
    assert tok.bos_token == "<|bos|>" and tok.pad_token == "<|pad|>"


def hf_model(kind: str, **kw):
    base = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[kind]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_cls(config_cls(**{**base, **kw})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(std=0.2)
    return model


IMPORTS = {
    "llama-tied": ("llama", {"tie_word_embeddings": True}),
    "llama-untied-headdim": ("llama", {"tie_word_embeddings": False, "head_dim": 24}),
    "llama-llama3": ("llama", {"rope_scaling": {**LLAMA3, "rope_theta": 5e5}}),
    "llama-yarn": ("llama", {"rope_scaling": {**YARN, "rope_theta": 1e4}}),
    "llama-bias": ("llama", {"attention_bias": True}),
    "mistral": ("mistral", {"sliding_window": None}),
    "qwen2": ("qwen2", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("case", list(IMPORTS))
def test_import_matches_transformers_logits(tmp_path, case):
    kind, kw = IMPORTS[case]
    hf = hf_model(kind, **kw)
    folder = tmp_path / "hf"
    hf.save_pretrained(folder, max_shard_size="20KB")  # several shards + an index
    assert (folder / "model.safetensors.index.json").is_file()
    ours, _ = load_hf_model(folder)
    ids = torch.randint(0, 64, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=1e-5)


def test_legacy_rope_config_parses_as_transformers_does(tmp_path):
    """rope_scaling with the legacy 'type' key and rope_theta at the top level; yarn's original
    length and dynamic's max length from the top level; unknown keys warn."""
    hf = hf_model("llama", rope_scaling={**YARN, "rope_theta": 2e4})
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    original = params["original_max_position_embeddings"]
    config["rope_scaling"] = {"type": "yarn", "factor": params["factor"], "original_max_position_embeddings": original}
    (folder / "config.json").write_text(json.dumps(config))
    reread = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ours, cfg = load_hf_model(folder)
    assert cfg.rope_base == 2e4 and cfg.rope_scaling["rope_type"] == "yarn"
    ids = torch.randint(0, 64, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reread(ids).logits, rtol=0, atol=1e-5)
    base, scaling, partial = rope_from_hf(
        {"rope_scaling": {"type": "dynamic", "factor": 2.0}, "max_position_embeddings": 512}
    )
    assert (base, scaling, partial) == (
        10000.0,
        {"rope_type": "dynamic", "factor": 2.0, "max_position_embeddings": 512},
        1.0,
    )
    with pytest.warns(UserWarning, match="ignoring keys finetuned"):
        rope_from_hf({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "finetuned": True}})


def test_converted_tapa_keeps_every_weight(tmp_path):
    hf = hf_model("llama", tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "tapa"
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(out), "--positional", "tapa"]) == 0
    converted = load_pretrained(out)
    assert converted.config.positional == "tapa" and converted.config.rope_scaling is None
    rope, _ = load_hf_model(tmp_path / "hf")
    for (name, a), (_, b) in zip(rope.state_dict().items(), converted.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def test_bad_folders_give_one_line_and_write_nothing(tmp_path, capsys):
    gpt2 = tmp_path / "gpt2"
    gpt2_config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)
    transformers.GPT2LMHeadModel(gpt2_config).save_pretrained(gpt2)
    sharded = tmp_path / "sharded"
    hf_model("llama").save_pretrained(sharded, max_shard_size="20KB")
    next(sharded.glob("model-00002-*.safetensors")).unlink()
    odd = tmp_path / "odd"
    hf_model("llama").save_pretrained(odd)
    config = json.loads((odd / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "su", "rope_theta": 1e4}
    (odd / "config.json").write_text(json.dumps(config))
    interleaved = tmp_path / "interleaved"
    save_pretrained(
        TapaLM(ModelConfig(positional="rope", rope_interleaved=True, vocab_size=50, d_model=16, n_layers=1, n_heads=2)),
        interleaved,
    )
    cases = [
        (["import-hf", str(gpt2)], "is not a Llama-architecture model"),
        (["import-hf", str(sharded)], "are missing"),
        (["import-hf", str(odd)], "rope_type 'su' is not one tapa implements"),
        (["import-hf", str(tmp_path / "nothing")], "no such folder"),
        (["export-hf", str(interleaved)], "interleaved RoPE"),
    ]
    capsys.readouterr()  # transformers' progress bars while building the folders
    for argv, message in cases:
        out = tmp_path / "out"
        code, err = run_cli([*argv, "--out", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
        assert not out.exists()


NON_ROPE = {
    "tapa": {"positional": "tapa"},
    "tapa-gqa-untied-alpha": {
        "positional": "tapa",
        "n_kv_heads": 1,
        "tie_embeddings": False,
        "tapa_alpha": 0.5,
        "tapa_theta": 0.25,
    },
    "tapa-linear": {"positional": "tapa", "tapa_phase": "linear"},
    "tapa-full": {"positional": "tapa", "tapa_phase": "quadratic_full"},
    # the phase scale s: 1 as in the public forward-only code, 0 = phase off, 3 on the other phases
    "tapa-unscaled": {"positional": "tapa", "tapa_phase_scale": 1.0},
    "tapa-phase-off": {"positional": "tapa", "tapa_phase_scale": 0.0},
    "tapa-linear-s3": {"positional": "tapa", "tapa_phase": "linear", "tapa_phase_scale": 3.0},
    "tapa-full-s3": {"positional": "tapa", "tapa_phase": "quadratic_full", "tapa_phase_scale": 3.0},
    "nope": {"positional": "nope"},
    "alibi": {"positional": "alibi", "n_heads": 4},
}


def nonrope_run(tmp_path, **kw):
    config = ModelConfig(vocab_size=259, d_model=32, n_layers=2, **{"n_heads": 2, "init_std": 0.2, **kw})
    torch.manual_seed(0)
    model = TapaLM(config)
    if config.tapa_phase == "quadratic_full":  # learnt M and N differ from their Eq. 13 start
        with torch.no_grad():
            for block in model.blocks:
                block.attn.phase.m.add_(0.05 * torch.randn_like(block.attn.phase.m))
                block.attn.phase.n.add_(0.05 * torch.randn_like(block.attn.phase.n))
    run = tmp_path / "run"
    save_pretrained(model, run)
    Bytes().save(run)
    return model.eval(), run


@pytest.mark.parametrize("case", list(NON_ROPE))
def test_tapa_nope_alibi_export_as_remote_code(tmp_path, case):
    model, run = nonrope_run(tmp_path, **NON_ROPE[case])
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    assert {"modeling_tapa.py", "configuration_tapa.py"} <= {p.name for p in out.iterdir()}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "TapaForCausalLM"
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # the same math: float64 copies agree to rounding (init_std 0.2: peaked attention, large phases,
        # where float32 itself is only good to ~1e-4 against float64 in both implementations)
        torch.testing.assert_close(hf.double()(ids).logits, model.double()(ids), rtol=0, atol=1e-10)
        hf.float(), model.float()
        ours = model.generate(ids[:1, :12], 10, eos_id=257)
        theirs = hf.generate(ids[:1, :12], max_new_tokens=10, do_sample=False, pad_token_id=258)  # KV cache
    assert torch.equal(ours, theirs)
    back = tmp_path / "back"
    assert main(["import-hf", str(out), "--out", str(back)]) == 0
    again = load_pretrained(back)
    assert again.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("case", ["tapa", "tapa-full", "alibi"])
def test_float32_export_within_1e5_at_the_default_init(tmp_path, case):
    model, run = nonrope_run(tmp_path, **{**NON_ROPE[case], "init_std": 0.02})
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-5)


def test_exported_tapa_loads_where_tapa_is_not_importable(tmp_path):
    import subprocess
    import sys

    model, run = nonrope_run(tmp_path, positional="tapa")
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids)[0, -1].tolist()
    script = (
        "import sys, json; sys.modules['tapa'] = None\n"  # any `import tapa` now fails
        "import torch, transformers\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()\n"
        f"ids = torch.tensor([{ids[0].tolist()}])\n"
        "print(json.dumps(m(ids).logits[0, -1].tolist()))\n"
    )
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-5


def test_tapa_auto_classes_register_in_process(tmp_path):
    import tapa.hf.auto  # noqa: F401

    model, run = nonrope_run(tmp_path, positional="tapa", init_std=0.02)
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()  # no trust_remote_code needed
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids), rtol=0, atol=1e-5)


def test_convert_rope_run_to_tapa_keeps_weights_and_tokenizer(tmp_path):
    model, run = tapa_run(tmp_path, rope_scaling={"rope_type": "linear", "factor": 2.0})
    out = tmp_path / "as_tapa"
    assert main(["convert", str(run), "--positional", "tapa", "--out", str(out)]) == 0
    converted = load_pretrained(out)
    assert converted.config == model.config.replace(positional="tapa", rope_scaling=None)
    for (name, a), (_, b) in zip(model.state_dict().items(), converted.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert (out / "tokenizer_config.json").read_text() == (run / "tokenizer_config.json").read_text()
    ids = torch.randint(0, 256, (1, 30))
    with torch.no_grad():  # now TAPA attention: different logits from the same weights
        assert not torch.allclose(converted(ids), model.eval()(ids), atol=1e-3)


def exported_tapa(tmp_path, **kw):
    model, run = nonrope_run(tmp_path, positional="tapa", n_kv_heads=1, **kw)
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    return model, hf, out


def test_remote_tapa_hidden_states_equal_tapas_layer_by_layer(tmp_path):
    """output_hidden_states as Llama gives them: embeddings, each block's output, then the final norm's."""
    model, hf, _ = exported_tapa(tmp_path)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    captured = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: captured.append(out)) for b in model.blocks]
    with torch.no_grad():
        model.double()(ids)
        got = hf.double()(ids, output_hidden_states=True).hidden_states
    for h in hooks:
        h.remove()
    want = [model.embed(ids), *captured[:-1], model.norm(captured[-1])]
    assert len(got) == model.config.n_layers + 1
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10, msg=f"hidden state {i}")


def test_remote_tapa_attentions_are_tapa_scores_softmaxed(tmp_path):
    from tapa.attention import tapa_scores
    from tapa.theory.scores import capture_qk

    model, hf, _ = exported_tapa(tmp_path, tapa_phase_scale=1.0)
    ids = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        attentions = hf.double()(ids, output_attentions=True).attentions
        qk = capture_qk(model.double(), ids)
    c = model.config
    future = torch.ones(20, 20, dtype=torch.bool).triu(1)
    assert len(attentions) == c.n_layers
    for layer, ((q, k), got) in enumerate(zip(qk, attentions, strict=True)):
        assert got.shape == (1, c.n_heads, 20, 20)
        torch.testing.assert_close(got.sum(-1), torch.ones(1, c.n_heads, 20, dtype=got.dtype))
        scores = tapa_scores(q.double(), k.double(), alpha=c.tapa_alpha, theta=c.tapa_theta, phase_scale=1.0)
        want = scores.masked_fill(future, float("-inf")).softmax(-1)
        torch.testing.assert_close(got, want.to(got.dtype), rtol=0, atol=1e-6, msg=f"layer {layer}")
    assert hf(ids).attentions is None and hf(ids).hidden_states is None  # only when asked


def test_remote_tapa_inputs_embeds_and_bf16_logits(tmp_path):
    _, hf, out = exported_tapa(tmp_path)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        embeds = hf.get_input_embeddings()(ids)
        torch.testing.assert_close(hf(inputs_embeds=embeds).logits, hf(ids).logits, rtol=0, atol=0)
        with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
            hf(ids, inputs_embeds=embeds)
    half = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.bfloat16)
    with torch.no_grad():
        assert half(ids).logits.dtype == torch.bfloat16  # as transformers' Llama returns them


def test_remote_tapa_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    _, hf, _ = exported_tapa(tmp_path)
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(5))
    hf.train()

    def grads():
        hf.zero_grad()
        hf(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in hf.named_parameters() if p.grad is not None}

    plain = grads()
    assert hf.supports_gradient_checkpointing
    hf.gradient_checkpointing_enable()
    assert hf.model.gradient_checkpointing
    calls = []
    original = hf.model._gradient_checkpointing_func
    hf.model._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or original(*a, **k)
    checkpointed = grads()
    assert len(calls) == hf.config.num_hidden_layers  # every block ran through the checkpoint function
    assert plain.keys() == checkpointed.keys()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_exported_files_have_normal_permissions(tmp_path):
    """Every published file gets 0666 minus the umask (safetensors itself writes 0600)."""
    import os

    from tapa.utils.files import current_umask

    _, run = nonrope_run(tmp_path, positional="tapa")
    out = tmp_path / "hf"
    old = os.umask(0o022)
    try:
        assert main(["export-hf", str(run), "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert current_umask() == old
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    for key, value in list(config.items()):
        if value is _DROP:
            del config[key]
    (folder / "config.json").write_text(json.dumps(config))


_DROP = object()
MISTRAL = {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}
TAPA_NO_POSITIONAL = {
    "model_type": "tapa",
    "architectures": ["TapaForCausalLM"],
    "tapa_alpha": 0.1,
    "tapa_theta": 0.5,
    "tapa_phase": "quadratic",
}
BAD_IMPORTS = {
    "num_attention_heads 0": lambda d: _edit_config(d, num_attention_heads=0),
    "hidden_size a string": lambda d: _edit_config(d, hidden_size="32"),
    "rope_parameters a string": lambda d: _edit_config(d, rope_parameters="abc"),
    "rope_theta a string": lambda d: _edit_config(d, rope_parameters={"rope_type": "default", "rope_theta": "abc"}),
    "sliding_window a string": lambda d: _edit_config(d, **MISTRAL, sliding_window="abc"),
    "rms_norm_eps negative": lambda d: _edit_config(d, rms_norm_eps=-1),
    "no vocab_size": lambda d: _edit_config(d, vocab_size=_DROP),
    "tapa config without positional": lambda d: _edit_config(d, **TAPA_NO_POSITIONAL),
    "weights are text": lambda d: (d / "model.safetensors").write_text("not safetensors"),
    "weights truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:500]),
    "index is garbled": lambda d: (d / "model.safetensors.index.json").write_text("{garbled"),
    "index weight_map is a list": lambda d: (d / "model.safetensors.index.json").write_text('{"weight_map": [1]}'),
    "tokenizer.json is garbled": lambda d: (d / "tokenizer.json").write_text('{"model": 7}'),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_bad_import_folders_give_one_line_and_write_nothing(tmp_path, capsys, case):
    folder = tmp_path / "hf"
    hf_model("llama").save_pretrained(folder)
    BAD_IMPORTS[case](folder)
    capsys.readouterr()  # transformers' own progress output while saving the folder
    out = tmp_path / "run"
    code, err = run_cli(["import-hf", str(folder), "--out", str(out)], capsys)
    assert code == 2, (case, code, err)
    assert err.count("\n") == 1 and "Traceback" not in err, (case, err)
    assert not out.exists(), case


def test_export_message_names_trust_remote_code_for_remote_models(tmp_path, capsys):
    _, run = nonrope_run(tmp_path, positional="tapa")
    assert main(["export-hf", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out


def test_exported_tapa_tokenizer_loads_without_remote_code(tmp_path):
    """The documented way: PreTrainedTokenizerFast reads only the tokenizer files (no prompt)."""
    _, run = nonrope_run(tmp_path, positional="tapa")
    out = tmp_path / "hf"
    assert main(["export-hf", str(run), "--out", str(out)]) == 0
    tok = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    assert tok("abc").input_ids == [97, 98, 99]
