"""tapa study ablation|recall|diagnose end to end at smoke scale."""

import json
import math
from pathlib import Path

import pytest

from tapa.cli import main
from tapa.study.ablation import LADDERS, Cell, summarise


@pytest.fixture(scope="module")
def smoke_ladder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    out = root / "abl"
    assert (
        main(
            ["study", "ablation", "--ladder", "smoke", "--out", str(out), "--quiet", "--cache-dir", str(root / "cache")]
        )
        == 0
    )
    return root


def test_ablation_ladder_smoke_end_to_end_and_cached(smoke_ladder, capsys):
    tmp_path = smoke_ladder
    out = tmp_path / "abl"
    results = json.loads((out / "results.json").read_text())
    ladder = LADDERS["smoke"]
    rows = {row["name"]: row for row in results["rows"]}
    assert set(rows) == {c.name for c in ladder.cells}
    for row in rows.values():
        assert row["tapa_over_rope"] == pytest.approx(math.exp(row["tapa"]["val_loss"] - row["rope"]["val_loss"]))
    assert rows["byte-hd16"]["rope"]["seeds"] == ["0", "1"] and rows["bpe-hd32"]["rope"]["seeds"] == ["0"]
    assert {"rope", "tapa", "nope"} == set(results["diagnostics"]["byte-hd16"])
    assert "phase_median_d1" in results["diagnostics"]["byte-hd16"]["tapa"]["summary"]
    report = (out / "report.md").read_text()
    assert "| byte-hd16 | byte | 16 x 2 |" in report and "| bpe-hd32 | bpe | 32 x 1 |" in report
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("stages/*/result.json")}
    capsys.readouterr()
    again = ["study", "ablation", "--ladder", "smoke", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(again) == 0
    assert "done earlier" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("stages/*/result.json")} == stamps


def test_lr_cells_reuse_the_geometry_baselines():
    """A TAPA-only LR cell reads RoPE/NoPE from the same geometry; the paper rule is RoPE's LR / 5."""
    cell = Cell("x", "bpe", 128, lr_rule="paper", methods=("tapa",))
    assert cell.lr("tapa") == pytest.approx(cell.lr("rope") / 5) and cell.n_heads(128) == 1
    runs = {"x": {"rope": {"0": {"val_loss": 2.0, "val_bpb": 1.0}}, "tapa": {"0": {"val_loss": 2.5, "val_bpb": 1.2}}}}
    (row,) = summarise(runs, (cell,), 128)
    assert row["tapa_over_rope"] == pytest.approx(math.exp(0.5)) and "nope_over_rope" not in row


def test_recall_and_diagnose_smoke(tmp_path, smoke_ladder):
    out = tmp_path / "rec"
    assert main(["study", "recall", "--study", "smoke", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"rope", "tapa"}
    lengths = results["runs"]["tapa"]["0"]["lengths"]
    assert set(lengths) == {"12", "24"}
    for r in lengths.values():  # a fraction of correct queries: accuracy x queries is a whole number
        assert r["queries"] > 0 and r["accuracy"] * r["queries"] == pytest.approx(round(r["accuracy"] * r["queries"]))
    assert (out / "figures" / "recall_by_length.png").is_file()
    report = (out / "report.md").read_text()
    assert "Accuracy by depth of the first copy's start" in report and "61%" in report  # segment 4: (1+1/2+1/3)/3
    loss = results["runs"]["tapa"]["0"]["final_loss"]
    assert f"| tapa | 0 | {loss:.3f} | {lengths['12']['accuracy']:.1%} | {lengths['24']['accuracy']:.1%} |" in report

    abl = smoke_ladder / "abl"
    runs = sorted(str(p) for p in abl.glob("stages/train_tapa_s0-*/run"))
    diag = tmp_path / "diag"
    assert main(["study", "diagnose", *runs, "--out", str(diag), "--segments", "2"]) == 0
    data = json.loads((diag / "diagnostics.json").read_text())
    assert set(data) == set(runs) and all(len(d["layers"]) == 1 for d in data.values())
    assert "TAPA median abs(phase)" in (diag / "report.md").read_text()


def test_recall_subsets_share_stages_with_the_full_study(tmp_path):
    """--methods/--seeds run part of a study; the full study then reuses those stages (a
    stage's key leaves out the lists), and the key-value task still runs (smoke-pairs)."""
    out = tmp_path / "rec"
    assert main(["study", "recall", "--study", "smoke", "--out", str(out), "--methods", "tapa", "--quiet"]) == 0
    assert set(json.loads((out / "results.json").read_text())["runs"]) == {"tapa"}
    (stage,) = out.glob("stages/recall_tapa_s0-*/result.json")
    stamp = stage.stat().st_mtime_ns
    assert main(["study", "recall", "--study", "smoke", "--out", str(out), "--quiet"]) == 0
    assert stage.stat().st_mtime_ns == stamp and len(list(out.glob("stages/*/result.json"))) == 2
    assert set(json.loads((out / "results.json").read_text())["runs"]) == {"rope", "tapa"}
    # --jobs 2: the same stages trained in two worker processes, the same numbers
    par = tmp_path / "par"
    assert main(["study", "recall", "--study", "smoke", "--out", str(par), "--jobs", "2", "--quiet"]) == 0
    one, two = (json.loads((d / "results.json").read_text())["runs"] for d in (out, par))
    for method in ("rope", "tapa"):
        assert two[method]["0"]["final_loss"] == pytest.approx(one[method]["0"]["final_loss"], rel=1e-4)
    assert len(list(par.glob("stages/*/result.json"))) == 2 and "| rope | 0 |" in (par / "report.md").read_text()
    pairs = tmp_path / "pairs"
    assert main(["study", "recall", "--study", "smoke-pairs", "--out", str(pairs), "--quiet"]) == 0
    assert "key-value pairs" in (pairs / "report.md").read_text()


@pytest.mark.parametrize(
    ("kw"),
    [
        {"d_model": 64, "n_heads": 1, "head_dim": 64},
        {"d_model": 48, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "tie_embeddings": False},
        {"d_model": 32, "n_heads": 2, "qkv_bias": True},  # the biases an earlier count left out
        {"d_model": 32, "n_heads": 2, "attention_bias": True},
        {"d_model": 32, "n_heads": 2, "positional": "tapa", "tapa_phase": "quadratic_full"},
    ],
)
def test_non_embedding_parameters_match_the_model(kw):
    from tapa.model import ModelConfig, TapaLM
    from tapa.study.scale import non_embedding_parameters

    config = ModelConfig(**{"positional": "rope", "vocab_size": 50, "n_layers": 2, **kw})
    model = TapaLM(config)
    embedding = model.embed.weight.numel() + (0 if config.tie_embeddings else model.lm_head.weight.numel())
    assert non_embedding_parameters(config) == model.num_parameters() - embedding


def test_trend_fit_closed_form():
    from tapa.study.scale import trend

    fit = trend([(1.0, 0.5), (2.0, 0.3), (3.0, 0.1)])  # exact line y = 0.7 - 0.2 x: zero at x = 3.5
    assert fit["slope"] == pytest.approx(-0.2) and fit["intercept"] == pytest.approx(0.7)
    assert fit["slope_se"] == pytest.approx(0.0, abs=1e-12) and fit["zero_at"] == pytest.approx(3.5)
    assert trend([(1.0, 0.5), (2.0, 0.6), (3.0, 0.7)])["zero_at"] is None  # moving away from parity


def test_scale_smoke_end_to_end(tmp_path):
    out = tmp_path / "scale"
    assert (
        main(
            [
                "study",
                "scale",
                "--ladder",
                "smoke",
                "--out",
                str(out),
                "--quiet",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert [r["size"] for r in results["rows"]] == ["S", "M", "L"]
    params = [r["non_embedding_params"] for r in results["rows"]]
    assert params == sorted(params) and params[-1] >= 8 * params[0]
    for r in results["rows"]:
        assert r["compute"] == 6 * r["non_embedding_params"] * r["tokens"]
        ppl = r["perplexity"]
        assert r["tapa_over_rope"] == pytest.approx(ppl["tapa"]["16"] / ppl["rope"]["16"])
        assert r["extrapolation"]["rope"]["32"] == pytest.approx(ppl["rope"]["32"] / ppl["rope"]["16"])
    assert "paper's compute" in (out / "report.md").read_text() and (out / "figures" / "scale.png").is_file()


def test_trend_slope_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from tapa.study.scale import trend

    points = [(1.0, 0.21), (1.0, 0.25), (2.0, 0.26), (2.0, 0.33), (3.5, 0.30), (3.5, 0.41)]
    fit = trend(points)
    ref = stats.linregress([p[0] for p in points], [p[1] for p in points])
    half = stats.t.ppf(0.975, len(points) - 2) * ref.stderr
    assert fit["slope"] == pytest.approx(ref.slope) and fit["slope_se"] == pytest.approx(ref.stderr)
    assert (fit["slope_low"], fit["slope_high"]) == pytest.approx((ref.slope - half, ref.slope + half))
    assert trend([(1.0, 0.2), (1.0, 0.3)]) is None  # one size, however many seeds: no line


def test_scale_ladder_with_seeds_pairs_by_seed_and_fits_every_point(tmp_path):
    out = tmp_path / "scale"
    assert (
        main(
            [
                "study",
                "scale",
                "--ladder",
                "smoke-seeds",
                "--out",
                str(out),
                "--quiet",
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["ladder"]["seeds"] == [0, 1] and results["ladder"]["methods"] == ["rope", "tapa"]
    points = []
    for row in results["rows"]:
        runs = results["runs"][row["size"]]
        per_seed = {
            s: runs["tapa"][s]["perplexity"]["lengths"]["16"]["perplexity"]
            / runs["rope"][s]["perplexity"]["lengths"]["16"]["perplexity"]
            for s in ("0", "1")
        }
        assert row["seeds"] == [0, 1] and row["tapa_over_rope_interval"]["ratios"] == pytest.approx(per_seed)
        assert row["tapa_over_rope"] == pytest.approx(math.sqrt(per_seed["0"] * per_seed["1"]))  # geometric mean
        low, high = row["tapa_over_rope_interval"]["low"], row["tapa_over_rope_interval"]["high"]
        assert low <= row["tapa_over_rope"] <= high and "nope_over_rope" not in row
        assert row["tapa_over_rope_by_length"]["16"]["ratio"] == pytest.approx(row["tapa_over_rope"])
        at_32 = {
            s: runs["tapa"][s]["perplexity"]["lengths"]["32"]["perplexity"]
            / runs["rope"][s]["perplexity"]["lengths"]["32"]["perplexity"]
            for s in ("0", "1")
        }
        assert row["tapa_over_rope_by_length"]["32"]["ratios"] == pytest.approx(at_32)
        points += [(math.log10(row["compute"]), math.log(v)) for v in per_seed.values()]
        for s in ("0", "1"):  # TAPA ran with the ladder's phase scale
            config = json.loads((Path(runs["tapa"][s]["train"]["run"]) / "config.json").read_text())
            assert config["tapa_phase_scale"] == 1.0
        from tapa.train.metrics import read_metrics

        def late_max(run: str) -> float:  # the second half of training
            norms = [v for _, v in sorted(read_metrics(run, "grad_norm").items())]
            return max(norms[len(norms) // 2 :])

        late = {m: max(late_max(runs[m][s]["train"]["run"]) for s in ("0", "1")) for m in ("rope", "tapa")}
        assert row["late_grad_norm"] == pytest.approx(late)
    assert results["fit"]["n"] == 4 and results["prediction"]["df"] == 2
    from tapa.study.scale import trend

    assert results["fit"]["slope"] == pytest.approx(trend(points)["slope"])
    assert "2 seeds per size" in (out / "report.md").read_text()


def test_refit_reads_a_one_seed_results_file(tmp_path):
    from tapa.study.scale import refit_scale

    rows = [
        {
            "size": n,
            "compute": c,
            "tapa_over_rope": r,
            "nope_over_rope": 1.1,
            "non_embedding_params": 1e5,
            "tokens": 1e5,
            "extrapolation": {m: {"8": 1.0, "16": 1.0} for m in ("rope", "tapa", "nope")},
            "perplexity": {m: {"8": 10.0, "16": 10.0} for m in ("rope", "tapa", "nope")},
        }
        for n, c, r in (("S", 1e11, 1.2), ("M", 1e12, 1.3), ("L", 1e13, 1.5))
    ]
    ladder = {
        "sizes": [],
        "seed": 0,
        "seq_len": 8,
        "length_factors": [1, 2],
        "tokenizer": "bpe",
        "head_dim": 64,
        "batch_size": 16,
        "eval_tokens": 100,
    }
    (tmp_path / "results.json").write_text(json.dumps({"ladder": ladder, "rows": rows, "paper_compute": 1.6e22}))
    results = refit_scale(tmp_path)
    ys = [math.log(1.2), math.log(1.3), math.log(1.5)]
    slope = sum((x - 12) * (y - sum(ys) / 3) for x, y in zip((11, 12, 13), ys, strict=True)) / 2
    assert results["fit"]["slope"] == pytest.approx(slope) and results["prediction"]["df"] == 1
    assert "one seed per size" in (tmp_path / "report.md").read_text()
