"""``tapa export-hf RUN --out DIR`` and ``tapa import-hf DIR --out RUN``."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser("export-hf", help="write a RoPE run as a transformers folder (LlamaForCausalLM / Qwen2)")
    exp.add_argument("checkpoint", metavar="RUN", help="a tapa run or checkpoint folder")
    exp.add_argument("--out", required=True, help="a new (or empty) folder for the transformers model")
    exp.set_defaults(func=_export)
    imp = sub.add_parser("import-hf", help="load a Llama/Mistral/Qwen2 transformers folder as a tapa run")
    imp.add_argument("hf_dir", metavar="DIR", help="transformers folder: config.json + safetensors (+ tokenizer)")
    imp.add_argument("--out", required=True, help="a new (or empty) folder for the tapa run")
    imp.add_argument("--positional", choices=("rope", "tapa", "nope", "alibi"), default="rope",
                     help="keep RoPE, or switch the attention, keeping every weight (RoPE -> TAPA)")  # fmt: skip
    imp.set_defaults(func=_import)


def _export(args: argparse.Namespace) -> None:
    from tapa.hf.export import export_hf

    out = export_hf(args.checkpoint, args.out)
    print(f"exported {args.checkpoint} -> {out} (AutoModelForCausalLM.from_pretrained('{out}'))")


def _import(args: argparse.Namespace) -> None:
    from tapa.hf.importer import import_hf

    overrides = {"positional": args.positional} if args.positional != "rope" else {}
    out = import_hf(args.hf_dir, args.out, **overrides)
    print(f"imported {args.hf_dir} -> {out} (positional {args.positional})")
