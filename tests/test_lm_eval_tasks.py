"""The local lm-eval task files declare each metric's aggregation and direction (lm-eval warns
for every metric that lacks them), and the writer says how long its cloze items are."""

import pytest

from tapa.evaluate.lm_eval_tasks import CLOZE_TASK, PPL_TASK, main

yaml = pytest.importorskip("yaml")


def test_task_yamls_declare_aggregation_and_direction(tmp_path, capsys):
    main([str(tmp_path), "--context-words", "15"])
    assert "15 + 6 words" in capsys.readouterr().out
    expected = {
        PPL_TASK: {
            "word_perplexity": ("weighted_perplexity", False),
            "byte_perplexity": ("weighted_perplexity", False),
            "bits_per_byte": ("bits_per_byte", False),
        },
        CLOZE_TASK: {"acc": ("mean", True)},
    }
    for task, metrics in expected.items():
        listed = yaml.safe_load((tmp_path / f"{task}.yaml").read_text())["metric_list"]
        assert {m["metric"]: (m["aggregation"], m["higher_is_better"]) for m in listed} == metrics
