"""tapa generate: stops at the model's end-of-sequence ids, prints special tokens the way
transformers decodes them (or skips them), formats a chat prompt with the model's template;
import-hf carries a model's EOS ids and chat template along."""

import json

import pytest
import torch

from tapa.cli import main
from tapa.data.tokenizer import Bytes
from tapa.model import ModelConfig, TapaLM, save_pretrained
from tapa.model.generation import load_generation, render_chat


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(3)
    model = TapaLM(ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=2, max_seq_len=64, init_std=0.2))
    path = tmp_path / "run"
    save_pretrained(model, path)
    Bytes().save(path)
    return model.eval(), path


def generated(capsys, path, *extra):
    assert main(["generate", str(path), "--prompt", "ab", "--temperature", "0", "--max-new-tokens", "12", *extra]) == 0
    return capsys.readouterr().out.rstrip("\n")


def test_generate_stops_at_the_models_eos_ids(run, capsys):
    model, path = run
    prompt = torch.tensor([Bytes().encode("ab")])
    with torch.no_grad():
        free = model.generate(prompt, 12)[0, 2:].tolist()  # greedy, no stop
    assert len(free) == 12
    full = generated(capsys, path)
    # the model's generation config names the 4th new token (and an unused id) as EOS: stop there
    stop = free[3]
    first = free.index(stop)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [258, stop]}))
    short = generated(capsys, path)
    assert short == Bytes().decode(prompt[0].tolist() + free[: first + 1])
    assert len(short) < len(full)


def test_generate_flags_have_help_and_device(capsys):
    from tapa.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    gen = sub.choices["generate"]
    helps = {a.dest: a.help for a in gen._actions if a.dest != "help"}
    assert all(helps.values()), helps
    assert {"device", "max_new_tokens", "chat", "skip_special_tokens"} <= set(helps)


def test_chat_needs_a_template_and_renders_one(run, capsys):
    _, path = run
    assert main(["generate", str(path), "--prompt", "hi", "--chat"]) == 2
    assert "has no chat template" in capsys.readouterr().err
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    assert render_chat(template, "hi", {}) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    (path / "chat_template.jinja").write_text(template)
    assert main(["generate", str(path), "--prompt", "hi", "--chat", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.startswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_import_hf_carries_eos_ids_and_chat_template(tmp_path):
    transformers = pytest.importorskip("transformers")
    shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1}
    config = transformers.LlamaConfig(**shape, num_attention_heads=4, max_position_embeddings=64, eos_token_id=[5, 7])
    folder = tmp_path / "hf"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}"}))
    out = tmp_path / "run"
    assert main(["import-hf", str(folder), "--out", str(out)]) == 0
    assert load_generation(out) == ([5, 7], "{{ messages[0]['content'] }}")
    # a converted copy keeps them
    assert main(["convert", str(out), "--positional", "tapa", "--out", str(tmp_path / "tapa")]) == 0
    assert load_generation(tmp_path / "tapa")[0] == [5, 7]


def test_special_tokens_shown_as_transformers_does_unless_skipped(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from tapa.data.tokenizer import HFTokenizer

    vocab = {c: i for i, c in enumerate("abcdefghij ")}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.add_special_tokens(["<|im_end|>"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    ours = HFTokenizer.from_file(path)
    ids = ours.encode("abc<|im_end|>")
    assert "<|im_end|>" in ours.decode(ids, skip_special_tokens=False)
    assert "<|im_end|>" not in ours.decode(ids, skip_special_tokens=True)
