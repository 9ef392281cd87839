"""tapa plan: the closed-form parameter count equals a meta-device model's, for the paper's
7B configs and small variants; FLOPs and memory follow their stated formulas."""

from pathlib import Path

import pytest
import torch

from tapa.cli import main
from tapa.model import ModelConfig, TapaLM
from tapa.model.params import parameter_count
from tapa.train.plan import model_flags, plan

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def meta_count(config: ModelConfig) -> tuple[int, int]:
    with torch.device("meta"):
        model = TapaLM(config)
    total = model.num_parameters()
    embedding = model.embed.weight.numel() + (0 if config.tie_embeddings else model.lm_head.weight.numel())
    return total, total - embedding


@pytest.mark.parametrize("path", [CONFIGS / "paper-7b-rope.json", CONFIGS / "paper-7b-tapa.json"])
def test_paper_7b_configs_count_like_the_model(path):
    config = ModelConfig.load(path)
    assert parameter_count(config) == meta_count(config)
    assert round(parameter_count(config)[0] / 1e9, 2) == 8.03  # Llama-3-8B's geometry (untied, vocab 128256)


@pytest.mark.parametrize(
    "kw",
    [
        {"qkv_bias": True},
        {"attention_bias": True, "tie_embeddings": True},
        {"positional": "tapa", "tapa_phase": "quadratic_full", "head_dim": 24},
    ],
)
def test_small_variants_count_like_the_model(kw):
    config = ModelConfig(
        **{
            "positional": "rope",
            "vocab_size": 100,
            "d_model": 64,
            "n_layers": 3,
            "n_heads": 4,
            "n_kv_heads": 2,
            "tie_embeddings": False,
            **kw,
        }
    )
    assert parameter_count(config) == meta_count(config)


def test_flops_and_memory_formulas():
    config = ModelConfig(positional="tapa", vocab_size=1000, d_model=64, n_layers=2, n_heads=4)
    total, body = parameter_count(config)
    p = plan(config, gpus=4, seq_len=256)
    assert p.flops_per_token == 6 * (body + 1000 * 64) + 6 * 2 * 256 * 64
    assert p.state_gib_per_gpu == pytest.approx(18 * total / 4 / 2**30)
    assert plan(config, 4, 256, "ddp").state_gib_per_gpu == pytest.approx(18 * total / 2**30)
    assert p.activation_gib_per_sequence == pytest.approx(2 * 34 * 256 * 64 / 2**30)


def test_plan_command_prints_a_runnable_train_command(capsys):
    assert main(["plan", str(CONFIGS / "paper-7b-tapa.json"), "--gpus", "8", "--seq-len", "8192"]) == 0
    out = capsys.readouterr().out
    assert "8.030B" in out and "torchrun --standalone --nproc_per_node=8" in out
    flags = model_flags(ModelConfig.load(CONFIGS / "paper-7b-rope.json"))
    assert "--positional rope" in flags and "--rope-base 500000" in flags and "--tie-embeddings false" in flags
    # the flags rebuild the same model config through tapa train's parser
    from tapa.cli import build_parser

    assert "--parallel fsdp --activation-checkpointing true --data SHARDS" in out
    args = build_parser().parse_args(["train", "--out", "x", *flags.split(), "--parallel", "fsdp"])
    assert args.parallel == "fsdp"
    model_args = {k.removeprefix("model."): v for k, v in vars(args).items() if k.startswith("model.")}
    rebuilt = ModelConfig(**{**model_args, "vocab_size": 128256})
    assert rebuilt == ModelConfig.load(CONFIGS / "paper-7b-rope.json")
