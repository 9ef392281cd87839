"""The scale ladder: RoPE, TAPA and NoPE at growing model sizes (training tokens growing
with size), to see where TAPA's gap at L0 and its extrapolation advantage are heading.

Every size uses the paper's geometry as far as it goes (BPE tokens, head_dim 64, the
library's default LRs unless a ladder names its own); each (size, method, seed) trains once
as a cached stage, then is evaluated on the test book at L0 and multiples of it (sliding
windows, stride = window/4). Compute is counted as ``6 x N x T`` FLOPs with N the
non-embedding parameters and T the training tokens (the usual estimate; attention's L^2
term is small at L0 = 128).

Per size, TAPA/RoPE at L0 is paired by seed (:func:`tapa.utils.stats.paired_ratio`). The
trend is a least-squares line of log(TAPA/RoPE) against log10(compute) over every (size,
seed) point, with the slope's 95% t-interval; extrapolating it to the paper's compute, with
the 95% prediction interval of a new point there, says whether the trend taken at face
value reaches parity. With few sizes the uncertainty is large, and the report says so.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tapa.experiment.runs import environment, write_results
from tapa.experiment.stages import printer
from tapa.model import ModelConfig
from tapa.model.params import parameter_count
from tapa.paper import PAPER_COMPUTE
from tapa.study.ablation import BPE_VOCAB, train_stage
from tapa.study.perplexity_stage import perplexity_stage as heldout_perplexity
from tapa.train.config import TrainConfig
from tapa.utils.stats import line_fit, paired_ratio, prediction_interval, t_quantile

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
    seeds: tuple[int, ...] = (0,)
    tokenizer: str = "bpe"
    lr: tuple[tuple[str, float], ...] = ()  # peak LR per method where it differs from the library default
    methods: tuple[str, ...] = METHODS  # rope and tapa always; nope optional
    tapa_phase_scale: float | None = None  # None: the paper's 2 pi (ModelConfig's default)


SIZES = (Size("S", 64, 2, 1, 200), Size("M", 128, 3, 2, 400), Size("L", 192, 3, 3, 800))
XL = Size("XL", 256, 4, 4, 1200)
# the seeded ladders: RoPE and TAPA without the 2 pi, 3 seeds, evaluated to 32 x L0
SEEDED: dict[str, Any] = dict(
    seeds=(0, 1, 2), methods=("rope", "tapa"), tapa_phase_scale=1.0, length_factors=(1, 8, 16, 32)
)
SCALES = {
    "default": ScaleLadder(sizes=SIZES),
    # TAPA at the paper's ratio to RoPE's LR (2e-3 / 5): RoPE and NoPE are the default ladder's stages
    "tapa-lr-paper": ScaleLadder(sizes=SIZES, lr=(("tapa", 4e-4),)),
    # Three seeds per size, TAPA's best setting from the phase-scale study (no 2 pi, LR 2e-3 = RoPE's), to 32 x L0
    "seeds": ScaleLadder(sizes=SIZES, lr=(("tapa", 2e-3),), **SEEDED),
    # The same with one larger size (d_model 256, 4 layers, 4 heads; 1.5x L's tokens, what fits a 2-core session)
    "seeds-xl": ScaleLadder(sizes=(*SIZES, XL), lr=(("tapa", 2e-3),), **SEEDED),
    # The larger point alone, TAPA at 1e-3 (at 2e-3 its seed-0 run diverged: gradient norms up to 10^6)
    "xl-tapa-lr-1e-3": ScaleLadder(sizes=(XL,), lr=(("tapa", 1e-3),), **SEEDED),
    # Size L of "seeds" with TAPA one LR notch lower (1e-3): does the gap at L come from a fixed LR?
    "seeds-l-tapa-lr-1e-3": ScaleLadder(sizes=(SIZES[2],), lr=(("tapa", 1e-3),), **SEEDED),
    "smoke": ScaleLadder(
        sizes=(Size("S", 16, 1, 1, 3), Size("M", 32, 1, 2, 4), Size("L", 48, 2, 3, 5)),
        head_dim=16,
        seq_len=16,
        batch_size=4,
        eval_tokens=600,
        length_factors=(1, 2),
        tokenizer="byte",
    ),
    "smoke-seeds": ScaleLadder(
        sizes=(Size("S", 16, 1, 1, 3), Size("M", 32, 1, 2, 4)),
        head_dim=16,
        seq_len=16,
        batch_size=4,
        eval_tokens=600,
        length_factors=(1, 2),
        tokenizer="byte",
        seeds=(0, 1),
        methods=("rope", "tapa"),
        tapa_phase_scale=1.0,
    ),
}


def non_embedding_parameters(config: ModelConfig) -> int:
    """Every parameter but the embeddings (:func:`tapa.model.params.parameter_count`)."""
    return parameter_count(config)[1]


def size_config(ladder: ScaleLadder, size: Size, method: str, cache_dir: str | None, seed: int = 0) -> TrainConfig:
    extra = {"tapa_phase_scale": ladder.tapa_phase_scale} if method == "tapa" and ladder.tapa_phase_scale else {}
    model = ModelConfig(
        positional=method,
        d_model=size.d_model,
        n_layers=size.n_layers,
        n_heads=size.n_heads,
        head_dim=ladder.head_dim,
        max_seq_len=ladder.seq_len,
        **extra,
    )
    return TrainConfig(
        tokenizer=ladder.tokenizer,
        bpe_vocab_size=BPE_VOCAB,
        seq_len=ladder.seq_len,
        batch_size=ladder.batch_size,
        steps=size.steps,
        seed=seed,
        eval_every=0,
        save_every=max(1, size.steps // 4),
        eval_segments=64,
        cache_dir=cache_dir,
        model=model,
        lr=dict(ladder.lr).get(method),
    )


def stage_name(size: Size, method: str, seed: int) -> str:
    """``train_M_tapa`` for seed 0 (the one-seed ladders' names), ``train_M_tapa_s1`` otherwise."""
    return f"train_{size.name}_{method}" + (f"_s{seed}" if seed else "")


def gradient_norms(run: str) -> dict[str, float]:
    """The run's pre-clipping gradient norm: median, maximum, and maximum over the second half
    of training (a late rise is the instability the earlier ladder saw in TAPA at size L)."""
    from tapa.train.metrics import read_metrics

    norms = [v for _, v in sorted(read_metrics(run, "grad_norm").items())]
    late = norms[len(norms) // 2 :]
    return {"median": sorted(norms)[len(norms) // 2], "max": max(norms), "max_second_half": max(late)}


def perplexity_stage(out: Path, run: str, ladder: ScaleLadder, cache_dir: str | None, log) -> dict[str, Any]:
    lengths = [ladder.seq_len * f for f in ladder.length_factors]
    return heldout_perplexity(out, "perplexity", run, lengths, ladder.eval_tokens, cache_dir, log)


def trend(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """Least squares y = a + b x over (x, y) points; slope standard error and its 95% t-interval
    (n > 2), and the x where y reaches 0 (None when the slope does not head there)."""
    n = len(points)
    if n < 2 or len({x for x, _ in points}) < 2:
        return None
    fit = line_fit([x for x, _ in points], [y for _, y in points])
    a, b = fit["intercept"], fit["slope"]
    se = math.sqrt(fit["s2"] / fit["sxx"])  # NaN for two points
    half = t_quantile(0.975, n - 2) * se if n > 2 else math.nan
    my = a + b * fit["mean_x"]  # the mean of y: a least-squares line passes through (mean x, mean y)
    return {
        "intercept": a,
        "slope": b,
        "slope_se": se,
        "slope_low": b - half,
        "slope_high": b + half,
        "n": n,
        "zero_at": -a / b if b * (my) < 0 else None,
    }


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def size_row(size: Size, runs: dict[str, dict[str, Any]], methods: tuple[str, ...], l0: str) -> dict[str, Any] | None:
    """One size's summary over the seeds every method finished: TAPA/RoPE (and NoPE/RoPE) at L0
    paired by seed; perplexities and k x L0 / L0 ratios as geometric means over those seeds."""
    seeds = sorted(set.intersection(*(set(runs.get(m, {})) for m in methods)), key=int)
    if not seeds:
        return None
    ppl = {
        m: {s: {n: v["perplexity"] for n, v in runs[m][s]["perplexity"]["lengths"].items()} for s in seeds}
        for m in methods
    }
    lengths = list(ppl["rope"][seeds[0]])
    first = runs["rope"][seeds[0]]
    row: dict[str, Any] = {
        "size": size.name,
        "seeds": [int(s) for s in seeds],
        "non_embedding_params": first["non_embedding_params"],
        "tokens": first["tokens"],
        "compute": first["compute"],
    }
    loss = {m: {s: math.log(ppl[m][s][l0]) for s in seeds} for m in methods}
    for m in methods[1:]:
        paired = paired_ratio(loss[m], loss["rope"])
        row[f"{m}_over_rope"] = paired["ratio"]
        row[f"{m}_over_rope_interval"] = paired
        row[f"{m}_over_rope_by_length"] = {
            n: paired_ratio({s: math.log(ppl[m][s][n]) for s in seeds}, {s: math.log(ppl["rope"][s][n]) for s in seeds})
            for n in lengths
        }
    row["extrapolation"] = {
        m: {n: _geomean([ppl[m][s][n] / ppl[m][s][l0] for s in seeds]) for n in lengths} for m in methods
    }
    row["perplexity"] = {m: {n: _geomean([ppl[m][s][n] for s in seeds]) for n in lengths} for m in methods}
    if all("grad_norm" in runs[m][s] for m in methods for s in seeds):  # largest over the seeds
        row["late_grad_norm"] = {m: max(runs[m][s]["grad_norm"]["max_second_half"] for s in seeds) for m in methods}
    return row


def trend_points(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(log10 compute, log TAPA/RoPE) for every seed of every size (one per size in old results)."""
    points = []
    for r in rows:
        ratios = r.get("tapa_over_rope_interval", {}).get("ratios") or {"0": r["tapa_over_rope"]}
        points += [(math.log10(r["compute"]), math.log(v)) for v in ratios.values()]
    return points


def summarise_scale(results: dict[str, Any], ladder: ScaleLadder) -> dict[str, Any]:
    l0 = str(ladder.seq_len)
    rows = [size_row(size, results["runs"].get(size.name, {}), ladder.methods, l0) for size in ladder.sizes]
    rows = [row for row in rows if row is not None]
    points = trend_points(rows)
    fit = trend(points)
    return {"rows": rows, "fit": fit, "paper_compute": PAPER_COMPUTE, "prediction": paper_prediction(points, fit)}


def paper_prediction(points: list[tuple[float, float]], fit: dict[str, float] | None) -> dict[str, Any] | None:
    """The fitted log ratio at the paper's compute, with the 95% prediction interval of a new
    point there (Student t with n - 2 residual degrees of freedom: t = 12.7 for 3 points)."""
    if fit is None:
        return None
    x = math.log10(PAPER_COMPUTE)
    centre = fit["intercept"] + fit["slope"] * x
    prediction: dict[str, Any] = {"log10_compute": x, "log_ratio": centre, "ratio": math.exp(centre)}
    if len(points) > 2:
        pi = prediction_interval(line_fit([p[0] for p in points], [p[1] for p in points]), x)
        prediction.update(
            ratio_low=math.exp(pi["low"]),
            ratio_high=math.exp(pi["high"]),
            df=pi["df"],
            interval="95% prediction interval, t with n - 2 degrees of freedom",
        )
    return prediction


def refit_scale(out: str | Path) -> dict[str, Any]:
    """Recompute the trend and prediction of a finished ladder from its results.json (no stage runs)."""
    from tapa.errors import ConfigError
    from tapa.study.scale_report import write_scale_report
    from tapa.utils.jsonfile import read_json_object

    out = Path(out)
    results = read_json_object(out / "results.json", "--refit")
    try:
        points = trend_points(results["rows"])
        fit = trend(points)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"--refit: {out} holds no scale-ladder results.json ({type(err).__name__})") from None
    results.update(fit=fit, prediction=paper_prediction(points, fit))
    write_results(out, results)
    write_scale_report(results, out)
    return results


def run_scale(
    ladder: ScaleLadder, out: str | Path, cache_dir: str | None = None, verbose: bool = True, name: str | None = None
) -> dict:
    """Train and evaluate every (size, seed, method), smallest size first; results.json and the
    report are rewritten after each seed, so a stopped ladder leaves its finished sizes summarised."""
    from tapa.model import load_pretrained
    from tapa.study.scale_report import write_scale_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    log = printer(verbose)

    command = f"tapa study scale --ladder {name} --out {out}" if name else None
    results: dict[str, Any] = {
        "ladder": asdict(ladder),
        "command": command,
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": {},
    }
    for size in ladder.sizes:
        log(f"size {size.name}: d_model {size.d_model}, {size.n_layers} layers, {size.steps} steps")
        for seed in ladder.seeds:
            for method in ladder.methods:
                config = size_config(ladder, size, method, cache_dir, seed)
                trained = train_stage(out, config, stage_name(size, method, seed), log)
                params = non_embedding_parameters(load_pretrained(trained["run"]).config)
                tokens = config.steps * config.batch_size * config.seq_len  # all of it, also when a stage was resumed
                results["runs"].setdefault(size.name, {}).setdefault(method, {})[str(seed)] = {
                    "train": trained,
                    "non_embedding_params": params,
                    "tokens": tokens,
                    "compute": 6 * params * tokens,
                    "perplexity": perplexity_stage(out, trained["run"], ladder, cache_dir, log),
                    "grad_norm": gradient_norms(trained["run"]),
                }
            results.update(summarise_scale(results, ladder))
            results["wall_seconds"] = time.perf_counter() - started
            results["stage_seconds"] = sum(  # the stages this ladder used (others may share the folder)
                run["train"]["seconds"] + run["perplexity"]["seconds"]
                for by_method in results["runs"].values()
                for by_seed in by_method.values()
                for run in by_seed.values()
            )
            write_results(out, results)
            write_scale_report(results, out)
    return results
