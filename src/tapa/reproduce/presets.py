"""Scale presets for ``tapa reproduce`` (docs/paper.md section 5: keep the paper's ratios).

Fine-tuning length = 4 x L0, perplexity from L0/4 to 16 x L0, PI and YaRN factor 8, a
larger RoPE base for the ABF row (the paper's 2e8 / 5e5 = 400x), sliding stride = W/4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tapa.errors import ConfigError

PRETRAIN_METHODS = ("rope", "tapa", "tapa_linear", "nope", "alibi")
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

    @property
    def finetune_len(self) -> int:
        return 4 * self.seq_len

    @property
    def eval_lengths(self) -> list[int]:
        return [self.seq_len // 4 * 2**i for i in range(7)]  # L0/4 .. 16 L0

    def to_dict(self) -> dict:
        return {**asdict(self), "finetune_len": self.finetune_len, "eval_lengths": self.eval_lengths}


PRESETS = {
    "smoke": Preset(
        "smoke", d_model=32, n_layers=1, n_heads=2, seq_len=32, batch_size=8, pretrain_steps=15, finetune_steps=5,
        eval_tokens=1024, seeds=(0,), pretrain=("rope", "tapa", "tapa_linear", "nope"),
        finetune=("rope", "pi", "yarn", "tapa", "tapa_linear"), bias_pairs=200, theory_samples=20_000,
        left_out=("ALiBi", "RoPE at a larger base", "the alpha x theta grid", "passkey"),
    ),
    "quick": Preset(
        "quick", d_model=96, n_layers=3, n_heads=4, seq_len=128, batch_size=16, pretrain_steps=600, finetune_steps=100,
        eval_tokens=8192, seeds=(0,), pretrain=("rope", "tapa", "tapa_linear", "nope", "alibi"),
        finetune=("rope", "rope_big_base", "pi", "yarn", "tapa", "tapa_linear"), bias_pairs=4000,
        theory_samples=100_000,
        left_out=("NoPE and ALiBi fine-tuning", "the alpha x theta grid", "passkey", "seeds beyond one"),
    ),
    "small": Preset(
        "small", d_model=96, n_layers=3, n_heads=4, seq_len=128, batch_size=16, pretrain_steps=1000,
        finetune_steps=150, eval_tokens=16384, seeds=(0, 1, 2), pretrain=PRETRAIN_METHODS, finetune=FINETUNE_METHODS,
        bias_pairs=10_000, theory_samples=400_000, alpha_theta_grid=GRID,
        passkey_steps=500, passkey_trials=5,
    ),
    "gpu": Preset(
        "gpu", d_model=512, n_layers=8, n_heads=8, seq_len=1024, batch_size=32, pretrain_steps=2000,
        finetune_steps=200, eval_tokens=131072, seeds=(0, 1, 2), pretrain=PRETRAIN_METHODS, finetune=FINETUNE_METHODS,
        bias_pairs=10_000, theory_samples=1_000_000, alpha_theta_grid=GRID,
        passkey_steps=1000, passkey_trials=10, untested=True,
    ),
}  # fmt: skip


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
