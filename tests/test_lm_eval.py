"""lm-evaluation-harness on exported tapa models (RoPE as LlamaForCausalLM, TAPA as the
remote-code model), on the local tasks built from the test book. Slow, and skipped where
lm-eval is not installed (pip install 'tapa[eval]'; docs/hf.md has a worked example)."""

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from tapa.data.tokenizer import load_checkpoint_tokenizer  # noqa: E402
from tapa.evaluate.lm_eval_tasks import CLOZE_TASK, PPL_TASK, write_tasks  # noqa: E402
from tapa.hf.export import export_hf  # noqa: E402
from tapa.model import ModelConfig, TapaLM, save_pretrained  # noqa: E402


def our_accuracy(model: TapaLM, tokenizer, items: list[dict]) -> float:
    """The cloze accuracy by tapa's own model, with lm-eval's conventions: the continuation's
    tokens are those of context + choice after the context's tokens; the sum of their log
    probabilities picks the choice."""
    correct = 0
    for item in items:
        context = tokenizer.encode(item["context"])
        scores = []
        for choice in item["choices"]:
            whole = tokenizer.encode(item["context"] + choice)
            ids = torch.tensor([whole])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids[:, :-1]).double(), -1)[0]
            targets = torch.tensor(whole[len(context) :])
            rows = torch.arange(len(context) - 1, len(whole) - 1)
            scores.append(logp[rows, targets].sum().item())
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    return correct / len(items)


@pytest.mark.slow
@pytest.mark.parametrize("positional", ["rope", "tapa"])
def test_lm_eval_scores_an_exported_model_as_tapa_does(tmp_path, positional):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from tapa.data.corpus import load_split
    from tapa.data.tokenizer import HFTokenizer

    tokenizer = HFTokenizer.train_bpe(load_split("train")[:1], 400)
    torch.manual_seed(0)
    model = TapaLM(
        ModelConfig(
            vocab_size=tokenizer.vocab_size,
            d_model=32,
            n_layers=2,
            n_heads=2,
            max_seq_len=256,
            positional=positional,
            init_std=0.2,
        )
    ).eval()
    save_pretrained(model, tmp_path / "run")
    tokenizer.save(tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "hf")
    tasks = write_tasks(tmp_path / "tasks", n_cloze=24, max_paragraphs=4)
    results = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tmp_path / 'hf'},trust_remote_code=True,dtype=float32",
        tasks=[CLOZE_TASK, PPL_TASK],
        task_manager=TaskManager(include_path=str(tasks)),
        device="cpu",
        batch_size=4,
    )["results"]
    items = [json.loads(line) for line in (tasks / "persuasion_cloze.jsonl").read_text().splitlines()]
    expected = our_accuracy(model, load_checkpoint_tokenizer(tmp_path / "run"), items)
    assert results[CLOZE_TASK]["acc,none"] == pytest.approx(expected)
    assert 0 < results[PPL_TASK]["bits_per_byte,none"] < 12
