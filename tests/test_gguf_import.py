"""``tapa import-hf FILE.gguf``: a GGUF file the test writes itself (a random tiny Llama in
llama.cpp's layout, with a byte-level BPE tokenizer), read through transformers' GGUF loader.

The writer follows llama.cpp's conventions for the llama architecture: tensor names
``blk.N.attn_q.weight`` ..., query and key rows permuted from the half-split rotary layout to
the interleaved one (w.reshape(heads, 2, D/2, d).swapaxes(1, 2)), token list, token types and
merges. That the writer is right is checked too: transformers' model of the file must equal
the random model it was written from.
"""

import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from tapa.cli import main  # noqa: E402
from tapa.model import load_pretrained  # noqa: E402

HEADS, KV_HEADS = 4, 2
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def byte_vocab() -> list[str]:
    """GPT-2's byte alphabet (the library's map; that it matches transformers' GGUF reader is
    what the tokenizer assertion below checks)."""
    from tapa.hf.tokenizers import _bytes_to_unicode

    spelled = _bytes_to_unicode()
    return [spelled[b] for b in range(256)]


def permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order for q/k: within each head, rotary pairs (i, i + D/2) become adjacent rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, seed=0, tied=True):
    tokens = [*byte_vocab(), "Ġt", "Ġth", "<|endoftext|>"]
    merges = ["Ġ t", "Ġt h"]
    config = transformers.LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=len(tokens) - 1,
        eos_token_id=len(tokens) - 1,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms away from 1, so that a swapped norm would show
            p.add_(0.05 * torch.randn_like(p))
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-test-llama")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_feed_forward_length(96)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(64 // HEADS)
    w.add_rope_freq_base(50000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])  # 1 normal, 3 control
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_chat_template(CHAT_TEMPLATE)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not tied:
        names["lm_head.weight"] = "output.weight"
    layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(2):
        for ours, theirs in layer.items():
            names[f"model.layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    for hf_name, gguf_name in names.items():
        t = sd[hf_name]
        if "q_proj" in hf_name:
            t = permute(t, HEADS)
        elif "k_proj" in hf_name:
            t = permute(t, KV_HEADS)
        w.add_tensor(gguf_name, t.numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_import_gives_transformers_logits(tmp_path, tied):
    path = tmp_path / "tiny.gguf"
    original = write_gguf(path, tied=tied)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name).eval()
    ids = torch.randint(0, 257, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = loaded(ids).logits
        # the writer is right: the file holds the model it was written from
        torch.testing.assert_close(want, original(ids).logits, rtol=0, atol=1e-5)
    out = tmp_path / "run"
    assert main(["import-hf", str(path), "--out", str(out)]) == 0
    ours = load_pretrained(out).eval()
    assert ours.config.positional == "rope" and ours.config.n_kv_heads == KV_HEADS
    assert ours.config.tie_embeddings is tied and ours.config.rope_base == 50000.0
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), want, rtol=0, atol=1e-5)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    from tapa.data.tokenizer import load_checkpoint_tokenizer

    text = " the thin tooth"
    assert load_checkpoint_tokenizer(out).encode(text) == tok.encode(text, add_special_tokens=False)
    # the file's EOS id and chat template come along (tapa generate stops at it, --chat uses it)
    from tapa.model.generation import load_generation

    assert load_generation(out) == ([258], CHAT_TEMPLATE)


def test_gguf_import_to_tapa_keeps_every_weight(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    rope, tapa = tmp_path / "rope", tmp_path / "tapa"
    assert main(["import-hf", str(path), "--out", str(rope)]) == 0
    assert main(["import-hf", str(path), "--out", str(tapa), "--positional", "tapa"]) == 0
    a, b = load_pretrained(rope), load_pretrained(tapa)
    assert b.config.positional == "tapa"
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_a_file_that_is_not_gguf_is_one_clean_error(tmp_path, capsys):
    bad = tmp_path / "model.gguf"
    bad.write_text("not a gguf file")
    out = tmp_path / "run"
    assert main(["import-hf", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a GGUF file transformers can load" in err
    assert not out.exists()


def test_real_convert_study_runs_end_to_end_on_a_gguf(tmp_path):
    """The real-model study's stages at toy sizes, from a GGUF file: every row is scored, both
    arms train the same steps with only q and k changing, and a re-run reuses every stage."""
    import json

    path = tmp_path / "tiny.gguf"
    write_gguf(path)
    out = tmp_path / "study"
    argv = ["study", "real-convert", str(path), "--study", "smoke", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["perplexity"]) == {
        "original",
        "original+yarn",
        "naive_zero_shot",
        "lowfreq_zero_shot",
        "tapa_trained",
        "rope_trained",
        "rope_trained+yarn",
    }
    # YaRN only past the model's 128 tokens; the others at every length
    assert set(results["perplexity"]["original+yarn"]["lengths"]) == {"256"}
    assert set(results["perplexity"]["tapa_trained"]["lengths"]) == {"32", "64", "256"}
    runs = results["runs"]
    for arm, init in (("tapa", "lowfreq_zero_shot"), ("rope", "original")):
        assert len(results["train"][arm]["curve"]) == 2
        before, after = load_pretrained(runs[init]).state_dict(), load_pretrained(runs[f"{arm}_trained"]).state_dict()
        for name, tensor in before.items():
            trains = ".attn.wq." in name or ".attn.wk." in name
            assert torch.equal(tensor, after[name]) is not trains, name
    stages = sorted(p.name for p in (out / "stages").iterdir())
    assert main(argv) == 0  # a re-run: every stage reused, nothing new
    assert sorted(p.name for p in (out / "stages").iterdir()) == stages
    assert "TAPA / RoPE (both trained)" in (out / "report.md").read_text()
