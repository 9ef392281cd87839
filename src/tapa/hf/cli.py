"""``tapa export-hf RUN --out DIR`` and ``tapa import-hf DIR --out RUN``."""

from __future__ import annotations

import argparse

from tapa.positional import POSITIONAL_SCHEMES


def add_parsers(sub: argparse._SubParsersAction) -> None:
    exp = sub.add_parser(
        "export-hf",
        help="write a run as a transformers folder (RoPE: LlamaForCausalLM / Qwen2; "
        "TAPA, NoPE, ALiBi: TapaForCausalLM, trust_remote_code)",
    )
    exp.add_argument("checkpoint", metavar="RUN", help="a tapa run or checkpoint folder")
    exp.add_argument("--out", required=True, help="a new (or empty) folder for the transformers model")
    exp.set_defaults(func=_export)
    imp = sub.add_parser("import-hf", help="load a Llama/Mistral/Qwen2 transformers folder or GGUF file as a tapa run")
    imp.add_argument(
        "hf_dir",
        metavar="DIR|FILE.gguf",
        help="transformers folder (config.json + safetensors + tokenizer), or a llama.cpp GGUF file "
        "(dequantised on load; needs pip install -e '.[gguf]')",
    )
    imp.add_argument("--out", required=True, help="a new (or empty) folder for the tapa run")
    imp.add_argument(
        "--positional",
        choices=POSITIONAL_SCHEMES,
        default="rope",
        help="keep RoPE, or switch the attention, keeping every weight (RoPE -> TAPA)",
    )
    imp.set_defaults(func=_import)
    conv = sub.add_parser("convert", help="switch a run's positional scheme, keeping every weight (e.g. RoPE -> TAPA)")
    conv.add_argument("checkpoint", metavar="RUN", help="a tapa run or checkpoint folder")
    conv.add_argument("--positional", choices=POSITIONAL_SCHEMES, required=True)
    conv.add_argument("--out", required=True, help="a new (or empty) folder for the converted run")
    conv.set_defaults(func=_convert)


def _export(args: argparse.Namespace) -> None:
    from tapa.hf.export import export_hf
    from tapa.model import load_config

    remote = load_config(args.checkpoint).positional != "rope"
    out = export_hf(args.checkpoint, args.out)
    extra = ", trust_remote_code=True" if remote else ""
    print(f"exported {args.checkpoint} -> {out} (AutoModelForCausalLM.from_pretrained('{out}'{extra}))")


def _import(args: argparse.Namespace) -> None:
    from tapa.hf.importer import import_hf

    out = import_hf(args.hf_dir, args.out, None if args.positional == "rope" else args.positional)
    print(f"imported {args.hf_dir} -> {out} (positional {args.positional})")


def _convert(args: argparse.Namespace) -> None:
    from tapa.hf.convert import convert_checkpoint
    from tapa.model import load_config

    out = convert_checkpoint(args.checkpoint, args.out, args.positional)
    before = load_config(args.checkpoint).positional
    print(
        f"converted {args.checkpoint} ({before}) -> {out} ({args.positional}); "
        f"continue with: tapa finetune {out} --out RUN ..."
    )
