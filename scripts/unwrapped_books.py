"""Does RoPE's lead at small scale come from the books' hard line wraps?

The Gutenberg books are wrapped at about 70 characters, so a newline comes every ~20 BPE
tokens at a nearly regular distance: a purely positional pattern RoPE can learn and a
model without a usable position signal cannot. This script measures it two ways, at the
``paper-cpu`` geometry (BPE 2048, d_model 128, 3 layers, 1 head of 128, L0 = 128, 600 steps
of 16, seed 0), bits per byte on the test book (Persuasion) at L0 and 16 x L0:

1. the ``paper-cpu`` models (trained on the wrapped books) on the wrapped and on the
   unwrapped test book (reliance on the wraps: a distribution shift for every model);
2. the same methods trained from scratch on unwrapped books (every single newline inside a
   paragraph replaced by a space; paragraph breaks kept), tested on the unwrapped test
   book: the TAPA/RoPE gap when the wraps carry no signal.

    python scripts/unwrapped_books.py --reproduce runs/paper-cpu --out runs/unwrapped

Stages are cached in OUT (re-running skips finished ones); writes OUT/results.json and
OUT/report.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import re
import time
from pathlib import Path

from tapa.reproduce.stages import printer, run_stage

from tapa.data.corpus import SPLITS, load_split
from tapa.data.tokenizer import HFTokenizer, load_checkpoint_tokenizer
from tapa.evaluate.perplexity import evaluate_perplexity
from tapa.model import load_pretrained
from tapa.reproduce.pipeline import model_config
from tapa.reproduce.presets import get_preset
from tapa.study.ablation import train_stage
from tapa.train.config import TrainConfig

METHODS = ("rope", "tapa", "nope", "alibi")


def unwrap(text: str) -> str:
    """Single newlines (line wraps) -> spaces; blank lines (paragraph breaks) kept."""
    text = text.replace("\r\n", "\n")
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


def write_corpus(out: Path) -> dict[str, Path]:
    paths = {}
    for split, names in SPLITS.items():
        folder = out / "corpus" / split
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in zip(names, load_split(split), strict=True):
            (folder / f"{name}.txt").write_text(unwrap(text))
        paths[split] = folder
    return paths


def bits_per_byte(run: str, text: str, lengths: list[int], tokens: int) -> dict[str, float]:
    tokenizer = load_checkpoint_tokenizer(run)
    ids = __import__("torch").tensor(tokenizer.encode(text)[:tokens])
    model = load_pretrained(run).eval()

    def byte_count(t) -> int:
        return len(tokenizer.decode(t.tolist()).encode("utf-8"))

    out = {}
    for length in lengths:
        r = evaluate_perplexity(model, [ids], length, max(1, length // 4), batch_size=4, byte_count=byte_count)
        out[str(length)] = r.nats / math.log(2) / r.bytes
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reproduce", required=True, help="a finished `tapa reproduce --preset paper-cpu` folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = printer(True)
    started = time.perf_counter()
    preset = get_preset("paper-cpu")
    lengths = [preset.seq_len, 16 * preset.seq_len]
    paths = write_corpus(out)
    wrapped_test = load_split("test")[0]
    unwrapped_test = (paths["test"] / f"{SPLITS['test'][0]}.txt").read_text()
    tok_path = out / "tokenizer" / "tokenizer.json"
    if not tok_path.is_file():
        docs = [p.read_text() for p in sorted(paths["train"].glob("*.txt"))]
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        HFTokenizer.train_bpe(docs, preset.bpe_vocab).save(tok_path.parent)
    results: dict = {
        "lengths": lengths,
        "eval_tokens": preset.eval_tokens,
        "wrapped_models": {},
        "unwrapped_models": {},
    }
    for method in args.methods:
        (run,) = glob.glob(str(Path(args.reproduce) / "stages" / f"pretrain_{method}_s0-*" / "run"))
        results["wrapped_models"][method] = {
            test: run_stage(
                out,
                f"eval_wrapped_{method}_on_{test}",
                {"run": str(Path(run).resolve()), "test": test},
                lambda _d, r=run, t=text: {"bpb": bits_per_byte(r, t, lengths, preset.eval_tokens)},
                log,
            )["bpb"]
            for test, text in (("wrapped", wrapped_test), ("unwrapped", unwrapped_test))
        }
        config = TrainConfig(
            data=str(paths["train"]),
            val_data=str(paths["validation"]),
            tokenizer=str(tok_path),
            seq_len=preset.seq_len,
            batch_size=preset.batch_size,
            steps=preset.pretrain_steps,
            seed=0,
            eval_every=0,
            save_every=preset.pretrain_steps,
            eval_segments=32,
            model=model_config(method, preset),
        )
        trained = train_stage(out, config, f"train_{method}", log)
        results["unwrapped_models"][method] = run_stage(
            out,
            f"eval_unwrapped_{method}",
            {"run": trained["run"]},
            lambda _d, r=trained["run"]: {"bpb": bits_per_byte(r, unwrapped_test, lengths, preset.eval_tokens)},
            log,
        )["bpb"]
    results["wall_seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results))
    print(report(results))


def report(results: dict) -> str:
    l0, far = (str(n) for n in results["lengths"])
    wrapped, unwrapped = results["wrapped_models"], results["unwrapped_models"]
    lines = [
        "| method | trained wrapped, test wrapped | trained wrapped, test unwrapped | trained unwrapped, test "
        "unwrapped | ... at 16 x L0 |",
        "|---|---|---|---|---|",
    ]
    for m in wrapped:
        lines.append(
            f"| {m} | {wrapped[m]['wrapped'][l0]:.3f} | {wrapped[m]['unwrapped'][l0]:.3f} | "
            f"{unwrapped[m][l0]:.3f} | {unwrapped[m][far]:.3f} |"
        )
    gaps = []
    for label, table, key in (("wrapped -> wrapped", wrapped, "wrapped"), ("unwrapped -> unwrapped", unwrapped, None)):
        rope = table["rope"][key][l0] if key else table["rope"][l0]
        tapa = table["tapa"][key][l0] if key else table["tapa"][l0]
        nope = table["nope"][key][l0] if key else table["nope"][l0]
        gaps.append(f"- {label}: TAPA - RoPE {tapa - rope:+.3f} bits/byte, NoPE - RoPE {nope - rope:+.3f}")
    return "\n".join(
        [
            "# Line wraps and the TAPA/RoPE gap (bits per byte at L0, test book)",
            "",
            *lines,
            "",
            *gaps,
            "",
            f"Wall time of this call: {results['wall_seconds'] / 60:.1f} min.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
