"""The ``tapa`` command line. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from tapa.errors import TapaError
from tapa.utils.lock import locked_output


def _demo(args: argparse.Namespace) -> None:
    from tapa.demo import run_demo

    run_demo(out=args.out, seconds=args.seconds, positional=args.positional, seed=args.seed)


def _info(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tapa.model import load_pretrained
    from tapa.utils.manifest import MANIFEST_FILE

    model = load_pretrained(args.checkpoint)
    print(model.describe())
    if (Path(args.checkpoint) / MANIFEST_FILE).exists():
        print(f"integrity: every file matches {MANIFEST_FILE} (sizes and SHA-256)")
    else:
        print(f"integrity: not verified (no {MANIFEST_FILE} in this folder; saved by an older tapa or another tool)")
    print(model.config.to_json())


def _generate(args: argparse.Namespace) -> None:
    import torch

    from tapa.data.tokenizer import HFTokenizer, load_checkpoint_tokenizer
    from tapa.errors import ConfigError
    from tapa.model import load_pretrained
    from tapa.model.generation import load_generation, render_chat
    from tapa.utils.device import pick_device

    device = pick_device(args.device)
    model = load_pretrained(args.checkpoint).eval().to(device)
    tok = load_checkpoint_tokenizer(args.checkpoint)
    eos, template = load_generation(args.checkpoint)
    prompt = args.prompt
    if args.chat:
        if template is None:
            raise ConfigError(f"--chat: {args.checkpoint} has no chat template (chat_template.jinja); drop --chat")
        prompt = render_chat(template, prompt, {"bos_token": "", "eos_token": ""})
    ids = torch.tensor([tok.encode(prompt)], device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = model.generate(
        ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        eos_id=eos or [tok.eos_id],
        generator=gen,
    )
    if isinstance(tok, HFTokenizer):  # as transformers decodes: special tokens shown unless skipped
        print(tok.decode(out[0].cpu(), skip_special_tokens=args.skip_special_tokens))
    else:
        print(tok.decode(out[0].cpu()))


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``tapa train: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from tapa.positional import POSITIONAL_SCHEMES

    parser = _Parser(prog="tapa", description="Token-Aware Phase Attention: models and experiments")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a tiny model on the embedded books for a minute and generate text")
    demo.add_argument("--out", default="runs/demo", help="checkpoint directory (default: runs/demo)")
    demo.add_argument("--seconds", type=float, default=60.0, help="training budget in seconds (default: 60)")
    demo.add_argument("--positional", default="tapa", choices=POSITIONAL_SCHEMES, help="the positional scheme")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    info = sub.add_parser("info", help="print a checkpoint's parameter count and config")
    info.add_argument("checkpoint")
    info.set_defaults(func=_info)

    gen = sub.add_parser("generate", help="continue a prompt with a checkpoint (its saved tokenizer; bytes if none)")
    gen.add_argument("checkpoint", help="a tapa run or model folder")
    gen.add_argument("--prompt", required=True, help="the text to continue (or, with --chat, the user's message)")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="at most this many new tokens")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 decodes greedily")
    gen.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens (0: all)")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    gen.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    gen.add_argument(
        "--chat", action="store_true", help="format the prompt as one user message in the model's chat template"
    )
    gen.add_argument(
        "--skip-special-tokens",
        action="store_true",
        help="leave special tokens (<|im_end|>, ...) out of the printed text",
    )
    # generation stops at the model's end-of-sequence ids (its generation_config.json, else the tokenizer's EOS)
    gen.set_defaults(func=_generate)

    from tapa.train.cli import add_parsers as add_training_parsers

    add_training_parsers(sub)
    from tapa.data.cli import add_parsers as add_data_parsers

    add_data_parsers(sub)
    from tapa.evaluate.cli import add_parsers as add_evaluation_parsers

    add_evaluation_parsers(sub)
    from tapa.theory.cli import add_parsers as add_theory_parsers

    add_theory_parsers(sub)
    from tapa.reproduce.cli import add_parsers as add_reproduce_parsers

    add_reproduce_parsers(sub)
    from tapa.study.cli import add_parsers as add_study_parsers

    add_study_parsers(sub)
    from tapa.hf.cli import add_parsers as add_hf_parsers

    add_hf_parsers(sub)
    _show_defaults(sub)
    return parser


def _show_defaults(sub: argparse._SubParsersAction) -> None:
    """Every flag's default in --help, once: appended where the help text does not already say
    it, left out for flags without one (None, False); nested verbs (study ...) too."""
    for verb in sub.choices.values():
        for action in verb._actions:
            if isinstance(action, argparse._SubParsersAction):
                _show_defaults(action)
                continue
            has_default = all(action.default is not x for x in (None, False, argparse.SUPPRESS))
            if not action.option_strings or not has_default or action.help == argparse.SUPPRESS:
                continue
            if action.help is None:
                action.help = "(default: %(default)s)"
            elif "default" not in action.help:
                action.help += " (default: %(default)s)"


def _after_write_failure(args: argparse.Namespace) -> str:
    """What to do next: a training run continues from its last checkpoint once space is freed."""
    if args.command == "train":
        return f"; free space, then continue with: tapa train --out {args.out} --resume"
    if args.command == "finetune":
        return f"; free space, then continue with: tapa finetune {args.checkpoint} --out {args.out} --resume"
    return ""


def _one_line(message: str) -> str:
    """An error stays one line when a path in it holds a newline (shown as \\n)."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from tapa.cli_checks import check_args

        check_args(args)  # output folder, device, numbers: before anything is read or written
        out = getattr(args, "out", None)
        if out is None or int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 holds the lock
            args.func(args)
        else:
            with locked_output(out):
                args.func(args)
    except TapaError as err:
        print(f"tapa {args.command}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a path the checks could not foresee (disk full, permissions changed)
        where = f": {err.filename}" if err.filename else ""
        print(
            f"tapa {args.command}: error: {_one_line(f'{err.strerror or err}{where}')}{_after_write_failure(args)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"tapa {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
