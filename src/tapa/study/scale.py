"""The scale ladder: RoPE, TAPA and NoPE at growing model sizes (training tokens growing
with size), to see where TAPA's gap at L0 and its extrapolation advantage are heading.

Every size uses the paper's geometry as far as it goes (BPE tokens, head_dim 64, the
library's default LRs); each (size, method) trains once as a cached stage, then is
evaluated on the test book at L0, 8 x L0 and 16 x L0 (sliding windows, stride = window/4).
Compute is counted as ``6 x N x T`` FLOPs with N the non-embedding parameters and T the
training tokens (the usual estimate; attention's L^2 term is small at L0 = 128).

The trend is a least-squares line of log(TAPA/RoPE perplexity ratio at L0) against
log10(compute) over the sizes, with the slope's standard error; extrapolating it to the
paper's compute says whether the trend, taken at face value, reaches parity there. With
three points the uncertainty is large, and the report says so.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tapa.model import ModelConfig
from tapa.model.params import parameter_count
from tapa.paper import PAPER_COMPUTE
from tapa.reproduce.stages import printer
from tapa.study.ablation import BPE_VOCAB, train_stage
from tapa.study.perplexity_stage import perplexity_stage as heldout_perplexity
from tapa.train.config import TrainConfig
from tapa.utils.stats import line_fit, prediction_interval

METHODS = ("rope", "tapa", "nope")


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    steps: int


@dataclass(frozen=True)
class ScaleLadder:
    sizes: tuple[Size, ...]
    head_dim: int = 64
    seq_len: int = 128
    batch_size: int = 16
    eval_tokens: int = 16384
    length_factors: tuple[int, ...] = (1, 8, 16)
    seed: int = 0
    tokenizer: str = "bpe"
    lr: tuple[tuple[str, float], ...] = ()  # peak LR per method where it differs from the library default


SIZES = (Size("S", 64, 2, 1, 200), Size("M", 128, 3, 2, 400), Size("L", 192, 3, 3, 800))
SCALES = {
    "default": ScaleLadder(sizes=SIZES),
    # TAPA at the paper's ratio to RoPE's LR (2e-3 / 5): RoPE and NoPE are the default ladder's stages
    "tapa-lr-paper": ScaleLadder(sizes=SIZES, lr=(("tapa", 4e-4),)),
    "smoke": ScaleLadder(sizes=(Size("S", 16, 1, 1, 3), Size("M", 32, 1, 2, 4), Size("L", 48, 2, 3, 5)), head_dim=16,
                         seq_len=16, batch_size=4, eval_tokens=600, length_factors=(1, 2), tokenizer="byte"),
}  # fmt: skip


def non_embedding_parameters(config: ModelConfig) -> int:
    """Every parameter but the embeddings (:func:`tapa.model.params.parameter_count`)."""
    return parameter_count(config)[1]


def size_config(ladder: ScaleLadder, size: Size, method: str, cache_dir: str | None) -> TrainConfig:
    model = ModelConfig(positional=method, d_model=size.d_model, n_layers=size.n_layers, n_heads=size.n_heads,
                        head_dim=ladder.head_dim, max_seq_len=ladder.seq_len)  # fmt: skip
    return TrainConfig(tokenizer=ladder.tokenizer, bpe_vocab_size=BPE_VOCAB, seq_len=ladder.seq_len,
                       batch_size=ladder.batch_size, steps=size.steps, seed=ladder.seed, eval_every=0,
                       save_every=max(1, size.steps // 4), eval_segments=64, cache_dir=cache_dir,
                       model=model, lr=dict(ladder.lr).get(method))  # fmt: skip


def perplexity_stage(out: Path, run: str, ladder: ScaleLadder, cache_dir: str | None, log) -> dict[str, Any]:
    lengths = [ladder.seq_len * f for f in ladder.length_factors]
    return heldout_perplexity(out, "perplexity", run, lengths, ladder.eval_tokens, cache_dir, log)


def trend(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least squares y = a + b x over (x, y) points; slope standard error (n > 2) and the
    x where y reaches 0 (None when the slope does not head there)."""
    n = len(points)
    if n < 2:
        return None
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    resid = sum((y - a - b * x) ** 2 for x, y in points)
    se = math.sqrt(resid / (n - 2) / sxx) if n > 2 else float("nan")
    return {"intercept": a, "slope": b, "slope_se": se, "zero_at": -a / b if b * (my) < 0 else None}


def summarise_scale(results: dict[str, Any], ladder: ScaleLadder) -> dict[str, Any]:
    l0 = str(ladder.seq_len)
    rows = []
    for size in ladder.sizes:
        runs = results["runs"].get(size.name, {})
        if not all(m in runs for m in METHODS):
            continue
        ppl = {m: runs[m]["perplexity"]["lengths"] for m in METHODS}
        row = {"size": size.name, "non_embedding_params": runs["rope"]["non_embedding_params"],
               "tokens": runs["rope"]["tokens"], "compute": runs["rope"]["compute"],
               "tapa_over_rope": ppl["tapa"][l0]["perplexity"] / ppl["rope"][l0]["perplexity"],
               "nope_over_rope": ppl["nope"][l0]["perplexity"] / ppl["rope"][l0]["perplexity"],
               "extrapolation": {m: {n: ppl[m][n]["perplexity"] / ppl[m][l0]["perplexity"] for n in ppl[m]}
                                 for m in METHODS},
               "perplexity": {m: {n: ppl[m][n]["perplexity"] for n in ppl[m]} for m in METHODS}}  # fmt: skip
        rows.append(row)
    fit = trend([(math.log10(r["compute"]), math.log(r["tapa_over_rope"])) for r in rows])
    return {"rows": rows, "fit": fit, "paper_compute": PAPER_COMPUTE, "prediction": paper_prediction(rows, fit)}


def paper_prediction(rows: list[dict[str, Any]], fit: dict[str, float] | None) -> dict[str, Any] | None:
    """The fitted log ratio at the paper's compute, with the 95% prediction interval of a new
    point there (Student t with n - 2 residual degrees of freedom: t = 12.7 for 3 sizes)."""
    if fit is None:
        return None
    x = math.log10(PAPER_COMPUTE)
    centre = fit["intercept"] + fit["slope"] * x
    prediction: dict[str, Any] = {"log10_compute": x, "log_ratio": centre, "ratio": math.exp(centre)}
    if len(rows) > 2:
        xs = [math.log10(r["compute"]) for r in rows]
        pi = prediction_interval(line_fit(xs, [math.log(r["tapa_over_rope"]) for r in rows]), x)
        prediction.update(ratio_low=math.exp(pi["low"]), ratio_high=math.exp(pi["high"]), df=pi["df"],
                          interval="95% prediction interval, t with n - 2 degrees of freedom")  # fmt: skip
    return prediction


def refit_scale(out: str | Path) -> dict[str, Any]:
    """Recompute the trend and prediction of a finished ladder from its results.json (no stage runs)."""
    from tapa.errors import ConfigError
    from tapa.study.scale_report import write_scale_report

    out = Path(out)
    try:
        results = json.loads((out / "results.json").read_text())
        rows = results["rows"]
        fit = trend([(math.log10(r["compute"]), math.log(r["tapa_over_rope"])) for r in rows])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"--refit: {out} holds no scale-ladder results.json ({type(err).__name__})") from None
    results.update(fit=fit, prediction=paper_prediction(rows, fit))
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    write_scale_report(results, out)
    return results


def run_scale(ladder: ScaleLadder, out: str | Path, cache_dir: str | None = None, verbose: bool = True) -> dict:
    from tapa.model import load_pretrained
    from tapa.study.scale_report import write_scale_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    log = printer(verbose)

    results: dict[str, Any] = {"ladder": asdict(ladder), "runs": {}}
    for size in ladder.sizes:
        log(f"size {size.name}: d_model {size.d_model}, {size.n_layers} layers, {size.steps} steps")
        for method in METHODS:
            config = size_config(ladder, size, method, cache_dir)
            trained = train_stage(out, config, f"train_{size.name}_{method}", log)
            params = non_embedding_parameters(load_pretrained(trained["run"]).config)
            tokens = config.steps * config.batch_size * config.seq_len  # all of it, also when a stage was resumed
            results["runs"].setdefault(size.name, {})[method] = {
                "train": trained, "non_embedding_params": params, "tokens": tokens, "compute": 6 * params * tokens,
                "perplexity": perplexity_stage(out, trained["run"], ladder, cache_dir, log),
            }  # fmt: skip
        results.update(summarise_scale(results, ladder))
        results["wall_seconds"] = time.perf_counter() - started
        (out / "results.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
        write_scale_report(results, out)
    return results
