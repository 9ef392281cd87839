"""Local lm-evaluation-harness tasks built from the test book (Persuasion), so an exported
tapa model can be evaluated with ``lm_eval`` on a machine without network access.

- ``tapa_persuasion_ppl`` (``loglikelihood_rolling``): the book in paragraphs of at least
  ``min_words`` words; word / byte perplexity and bits per byte.
- ``tapa_persuasion_cloze`` (``multiple_choice``): a passage of ``context_words`` words and
  four candidate continuations of ``choice_words`` words: the true one and three taken
  from elsewhere in the book (seeded); accuracy. Chance is 25%.

Both keep the book's line breaks: the models are trained on the line-wrapped text, and
text with its line breaks replaced by spaces is a different distribution for them.

``write_tasks(DIR)`` writes the JSONL data and the task YAMLs (with absolute data paths);
pass ``--include_path DIR`` to lm_eval.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from tapa.data.corpus import load_split

PPL_TASK, CLOZE_TASK = "tapa_persuasion_ppl", "tapa_persuasion_cloze"


def paragraphs(text: str, min_words: int) -> list[str]:
    """Consecutive paragraphs of the book, as written (line breaks kept: the models were
    trained on the line-wrapped text), grouped until each piece has ``min_words`` words."""
    out, current, words = [], [], 0
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        current.append(block.strip("\n"))
        words += len(block.split())
        if words >= min_words:
            out.append("\n\n".join(current))
            current, words = [], 0
    return out


def cloze_items(text: str, n: int, context_words: int, choice_words: int, seed: int) -> list[dict]:
    """Passages of the raw text (line breaks kept) and four continuations of ``choice_words``
    words, each with the whitespace that precedes it in the book (the task's target delimiter
    is empty, so the model scores exactly the text that would follow)."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    span = context_words + choice_words
    rng = random.Random(seed)

    def piece(first: int, count: int) -> str:  # words first .. first+count-1 with their leading whitespace
        return text[spans[first - 1][1] : spans[first + count - 1][1]]

    items = []
    for start in sorted(rng.sample(range(1, len(spans) - span), n)):
        context = text[spans[start][0] : spans[start + context_words - 1][1]]
        truth = piece(start + context_words, choice_words)
        others: list[str] = []
        while len(others) < 3:
            at = rng.randrange(1, len(spans) - choice_words)
            if abs(at - (start + context_words)) > span:
                others.append(piece(at, choice_words))
        label = rng.randrange(4)
        items.append({"context": context, "choices": [*others[:label], truth, *others[label:]], "label": label})
    return items


def write_tasks(
    out: str | Path,
    n_cloze: int = 200,
    min_words: int = 60,
    context_words: int = 40,
    choice_words: int = 6,
    seed: int = 0,
    max_paragraphs: int = 100,
) -> Path:
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (text,) = load_split("test")
    with (out / "persuasion_paragraphs.jsonl").open("w") as f:
        for p in paragraphs(text, min_words)[:max_paragraphs]:
            f.write(json.dumps({"text": p}) + "\n")
    with (out / "persuasion_cloze.jsonl").open("w") as f:
        for item in cloze_items(text, n_cloze, context_words, choice_words, seed):
            f.write(json.dumps(item) + "\n")
    (out / f"{PPL_TASK}.yaml").write_text(
        f"task: {PPL_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {out / 'persuasion_paragraphs.jsonl'}\ntest_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
        "  - metric: word_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n"
        "  - metric: byte_perplexity\n    aggregation: weighted_perplexity\n    higher_is_better: false\n"
        "  - metric: bits_per_byte\n    aggregation: bits_per_byte\n    higher_is_better: false\n"
    )
    (out / f"{CLOZE_TASK}.yaml").write_text(
        f"task: {CLOZE_TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {out / 'persuasion_cloze.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        'target_delimiter: ""\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n'
    )
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tapa.evaluate.lm_eval_tasks", description="write tapa's local lm-eval tasks (Persuasion)"
    )
    parser.add_argument("out", nargs="?", default="lm_eval_tasks", help="folder for the data and task YAMLs")
    parser.add_argument("--context-words", type=int, default=40, help="words of cloze context (default: 40)")
    parser.add_argument("--choice-words", type=int, default=6, help="words per cloze continuation (default: 6)")
    args = parser.parse_args(argv)
    out = write_tasks(args.out, context_words=args.context_words, choice_words=args.choice_words)
    chars = 6 * (args.context_words + args.choice_words)
    print(
        f"{out}: cloze items of {args.context_words} + {args.choice_words} words (about {chars} characters); a model "
        "whose context is shorter than an item's tokens (a byte-level model trained at 128, say) sees its "
        "context truncated by lm-eval: lower --context-words to fit it"
    )


if __name__ == "__main__":
    main()
