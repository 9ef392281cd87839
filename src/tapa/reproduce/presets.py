"""Scale presets for ``tapa reproduce`` (docs/paper.md section 5: keep the paper's ratios).

Fine-tuning length = 4 x L0, perplexity from L0/4 to 16 x L0, PI and YaRN factor 8, a
larger RoPE base for the ABF row (the paper's 2e8 / 5e5 = 400x), sliding stride = W/4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tapa.errors import ConfigError

PRETRAIN_METHODS = ("rope", "tapa", "tapa_linear", "nope", "alibi")
# controls reviewers asked for: partial RoPE (half of each head rotates) and the learnable-M/N TAPA
CONTROLS = ("rope_partial", "tapa_full")
GRID = ((0.1, 0.25), (0.5, 0.5), (1.0, 0.5), (0.1, 0.75))  # (alpha, theta) besides the default (0.1, 0.5)
FINETUNE_METHODS = ("rope", "rope_big_base", "pi", "yarn", "tapa", "tapa_linear", "nope", "alibi")


@dataclass(frozen=True)
class Preset:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int  # L0
    batch_size: int
    pretrain_steps: int
    finetune_steps: int
    eval_tokens: int
    seeds: tuple[int, ...]
    pretrain: tuple[str, ...]
    finetune: tuple[str, ...]
    zero_shot_scaling: tuple[str, ...] = ("pi", "yarn", "ntk")
    bias_pairs: int = 2000
    theory_samples: int = 100_000
    alpha_theta_grid: tuple[tuple[float, float], ...] = ()
    passkey_steps: int = 0
    passkey_trials: int = 0
    left_out: tuple[str, ...] = field(default_factory=tuple)
    untested: bool = False
    # tokenizer: "byte", or "bpe" (trained once on the training books, vocabulary bpe_vocab)
    tokenizer: str = "byte"
    bpe_vocab: int = 2048
    head_dim: int | None = None  # None: d_model / n_heads
    # peak LR per method where it differs from the library default (a sweep at this geometry)
    lr: tuple[tuple[str, float], ...] = ()
    # too small to mean anything: the report says so at the top
    toy: bool = False
    # methods that run for the seeds after the first (None: every method; the rest run once)
    seeded_methods: tuple[str, ...] | None = None
    # training precision (fp32 or bf16 autocast) and torch.compile of each block
    precision: str = "fp32"
    compile: bool = False

    @property
    def finetune_len(self) -> int:
        return 4 * self.seq_len

    @property
    def eval_lengths(self) -> list[int]:
        return [self.seq_len // 4 * 2**i for i in range(7)]  # L0/4 .. 16 L0

    def runs_for_seed(self, method: str, seed: int) -> bool:
        """Whether ``method`` (a pretraining or fine-tuning row) runs for ``seed``."""
        return seed == self.seeds[0] or self.seeded_methods is None or method in self.seeded_methods

    def peak_lr(self, method: str) -> float | None:
        """This preset's LR for ``method`` (None: the library default for its scheme)."""
        return dict(self.lr).get(method)

    def to_dict(self) -> dict:
        return {**asdict(self), "finetune_len": self.finetune_len, "eval_lengths": self.eval_lengths}


SEEDED_FOR_VERDICTS = ("rope", "tapa", "nope", "tapa_linear")
# the paper's geometry as far as 2 CPU cores go (BPE tokens, L0 = 128, 600 + 100 steps, 3 seeds):
# shared by paper-cpu, paper-cpu-claims and paper-cpu-hd64, which differ in heads and in what they run
PAPER_CPU_GEOMETRY: dict[str, Any] = dict(
    d_model=128,
    n_layers=3,
    seq_len=128,
    batch_size=16,
    pretrain_steps=600,
    finetune_steps=100,
    eval_tokens=16384,
    seeds=(0, 1, 2),
    tokenizer="bpe",
    bpe_vocab=2048,
)
PRESETS = {
    "smoke": Preset(
        "smoke",
        d_model=32,
        n_layers=1,
        n_heads=2,
        seq_len=32,
        batch_size=8,
        pretrain_steps=15,
        finetune_steps=5,
        eval_tokens=1024,
        seeds=(0,),
        pretrain=("rope", "tapa", "tapa_linear", "nope"),
        finetune=("rope", "pi", "yarn", "tapa", "tapa_linear"),
        bias_pairs=200,
        theory_samples=20_000,
        left_out=("ALiBi", "RoPE at a larger base", "the alpha x theta grid", "passkey"),
        toy=True,
    ),
    "smoke-bpe": Preset(
        "smoke-bpe",
        d_model=32,
        n_layers=1,
        n_heads=1,
        seq_len=32,
        batch_size=8,
        pretrain_steps=10,
        finetune_steps=4,
        eval_tokens=1024,
        seeds=(0, 1),
        pretrain=("rope", "tapa", *CONTROLS),
        finetune=("rope", "tapa", *CONTROLS),
        zero_shot_scaling=("yarn",),
        bias_pairs=200,
        theory_samples=20_000,
        tokenizer="bpe",
        bpe_vocab=512,
        lr=(("tapa", 4e-4),),
        toy=True,
        seeded_methods=("rope", "tapa"),
        left_out=("NoPE", "ALiBi", "linear phase", "PI", "RoPE at a larger base", "the alpha x theta grid", "passkey"),
    ),
    "quick": Preset(
        "quick",
        d_model=96,
        n_layers=3,
        n_heads=4,
        seq_len=128,
        batch_size=16,
        pretrain_steps=600,
        finetune_steps=100,
        eval_tokens=8192,
        seeds=(0,),
        pretrain=("rope", "tapa", "tapa_linear", "nope", "alibi"),
        finetune=("rope", "rope_big_base", "pi", "yarn", "tapa", "tapa_linear"),
        bias_pairs=4000,
        theory_samples=100_000,
        left_out=("NoPE and ALiBi fine-tuning", "the alpha x theta grid", "passkey", "seeds beyond one"),
    ),
    "small": Preset(
        "small",
        d_model=96,
        n_layers=3,
        n_heads=4,
        seq_len=128,
        batch_size=16,
        pretrain_steps=1000,
        finetune_steps=150,
        eval_tokens=16384,
        seeds=(0, 1, 2),
        pretrain=PRETRAIN_METHODS,
        finetune=FINETUNE_METHODS,
        bias_pairs=10_000,
        theory_samples=400_000,
        alpha_theta_grid=GRID,
        passkey_steps=500,
        passkey_trials=5,
    ),
    "gpu": Preset(
        "gpu",
        d_model=512,
        n_layers=8,
        n_heads=8,
        seq_len=1024,
        batch_size=32,
        pretrain_steps=2000,
        finetune_steps=200,
        eval_tokens=131072,
        seeds=(0, 1, 2),
        pretrain=PRETRAIN_METHODS,
        finetune=FINETUNE_METHODS,
        bias_pairs=10_000,
        theory_samples=1_000_000,
        alpha_theta_grid=GRID,
        passkey_steps=1000,
        passkey_trials=10,
        untested=True,
        precision="bf16",
        compile=True,
    ),
    # the gpu preset's code paths (bf16 autocast, compile, every method, grid, passkey) at a
    # size a CPU runs in minutes: what CI can check of it without a GPU
    "gpu-dry": Preset(
        "gpu-dry",
        d_model=32,
        n_layers=2,
        n_heads=2,
        seq_len=64,
        batch_size=16,
        pretrain_steps=6,
        finetune_steps=3,
        eval_tokens=2048,
        seeds=(0,),
        pretrain=PRETRAIN_METHODS,
        finetune=FINETUNE_METHODS,
        bias_pairs=200,
        theory_samples=20_000,
        alpha_theta_grid=GRID[:1],
        passkey_steps=3,
        passkey_trials=1,
        precision="bf16",
        compile=True,
        toy=True,
    ),
    # the paper's geometry where 2 CPU cores allow it: BPE tokens, head_dim 128 (docs/study.md).
    # LRs: `tapa study lr --preset paper-cpu` (docs/reproduce.md) found TAPA best at its default
    # 1e-3 (the paper's RoPE/5 = 4e-4 and 2e-3, 4e-3 worse) and RoPE at 4e-3 within 1% of its
    # default 2e-3 (less than the seed spread), so both keep the library defaults. Seeds 1-2 run for
    # RoPE, TAPA, NoPE and the linear phase: claims 4 (quadratic vs linear, paired by seed) and 5
    # (the bias, with NoPE as the distance-blind control) need >= 3 seeds (reproduce/verdicts.py)
    "paper-cpu": Preset(
        "paper-cpu",
        **PAPER_CPU_GEOMETRY,
        n_heads=1,
        pretrain=(*PRETRAIN_METHODS, *CONTROLS),
        finetune=(*FINETUNE_METHODS, *CONTROLS),
        bias_pairs=10_000,
        theory_samples=400_000,
        head_dim=128,
        seeded_methods=SEEDED_FOR_VERDICTS,
        left_out=("the alpha x theta grid", "passkey (chance for every model at this size; see tapa study recall)"),
    ),
    # the paper-cpu runs claims 4 and 5 need, on three seeds each: RoPE, TAPA, the linear phase
    # and the NoPE control (pretrained exactly as paper-cpu pretrains them: the same stage keys),
    # the two TAPA phases fine-tuned, the bias of every seed at the paper's far distance
    "paper-cpu-claims": Preset(
        "paper-cpu-claims",
        **PAPER_CPU_GEOMETRY,
        n_heads=1,
        pretrain=("rope", "tapa", "tapa_linear", "nope"),
        finetune=("tapa", "tapa_linear"),
        zero_shot_scaling=(),
        bias_pairs=10_000,
        theory_samples=20_000,
        head_dim=128,
        left_out=(
            "RoPE scaling rows and the other fine-tunes (claims 2-3: see paper-cpu)",
            "ALiBi and the controls",
            "the alpha x theta grid",
            "passkey",
        ),
    ),
    # the same at head_dim 64 (2 heads of 64): the second point the science issue asks for
    "paper-cpu-hd64": Preset(
        "paper-cpu-hd64",
        **PAPER_CPU_GEOMETRY,
        n_heads=2,
        pretrain=(*PRETRAIN_METHODS, *CONTROLS),
        finetune=(*FINETUNE_METHODS, *CONTROLS),
        bias_pairs=10_000,
        theory_samples=400_000,
        head_dim=64,
        seeded_methods=SEEDED_FOR_VERDICTS,
        left_out=("the alpha x theta grid", "passkey (chance for every model at this size; see tapa study recall)"),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
