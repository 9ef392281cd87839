"""tapa reproduce: verdict logic on synthetic results, the smoke preset end to end (report
sections, results.json), and resuming after a kill without redoing finished stages."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tapa.reproduce.presets import get_preset
from tapa.reproduce.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, all_verdicts

L0 = 32
LENGTHS = [8, 16, 32, 64, 128, 256, 512]


def table(curves: dict[str, list[float]], seeds=1, jitter=0.0) -> dict:
    def run(vals, s):
        return {"lengths": {str(n): {"perplexity": v * (1 + jitter * s)} for n, v in zip(LENGTHS, vals, strict=True)}}

    return {m: {str(s): run(vals, s) for s in range(seeds)} for m, vals in curves.items()}


def synthetic(zero_shot, finetuned, bias=None, seeds=1, far=None) -> dict:
    return {
        "preset": {"seq_len": L0, "eval_lengths": LENGTHS},
        "zero_shot": table(zero_shot, seeds, 0.01),
        "finetuned": table(finetuned, seeds, 0.01),
        "bias": {"far": far, "methods": bias or {}},
    }


def bias_seeds(*stats) -> dict:
    """One method's bias measurement, one (mean, std, skewness) per seed."""
    return {"seeds": {str(i): {"mean": m, "std": s, "skewness": k} for i, (m, s, k) in enumerate(stats)}}


PAPER_FAR = round(1.2 * L0)  # the paper: far pairs at 10000 of a training length of 8192
PAPER_BIAS = {
    "rope": bias_seeds((4.1, 0.85, 0.5), (3.9, 0.80, 0.6), (4.3, 0.90, 0.4)),
    "tapa": bias_seeds((0.03, 3.3, 0.0), (-0.05, 3.1, 0.1), (0.02, 3.5, -0.1)),
    "nope": bias_seeds((0.01, 1.0, 0.0), (0.02, 1.1, 0.0), (-0.01, 0.9, 0.0)),
}

FLAT = [10.0, 9.8, 9.7, 9.7, 9.7, 9.7, 9.7]
BLOWUP = [10.0, 9.8, 9.7, 40.0, 400.0, 900.0, 2000.0]
FT_BLOWUP = [10.0, 9.8, 9.7, 9.6, 9.5, 300.0, 900.0]  # fine-tuned at 4 L0 = 128: collapses past it


def test_paper_like_results_are_reproduced():
    v = all_verdicts(
        synthetic(
            {
                "rope": BLOWUP,
                "rope+pi": BLOWUP,
                "tapa": [10.1, 9.9, 9.8, 10.5, 11.0, 12.0, 13.0],
                "tapa_linear": [11.0] * 7,
            },
            {"rope": FT_BLOWUP, "pi": FT_BLOWUP, "tapa": FLAT, "tapa_linear": [11.0] * 7},
            PAPER_BIAS,
            seeds=3,
            far=PAPER_FAR,
        )
    )
    assert {k: x["verdict"] for k, x in v.items()} == {
        "1": REPRODUCED,
        "2": REPRODUCED,
        "3": REPRODUCED,
        "4": REPRODUCED,
        "5": REPRODUCED,
    }


def test_tapa_collapsing_past_the_training_length_is_not_reproduced():
    collapse = [10.0, 9.8, 9.7, 60.0, 800.0, 3000.0, 9000.0]
    v = all_verdicts(synthetic({"rope": BLOWUP, "tapa": collapse}, {"rope": FT_BLOWUP, "tapa": FT_BLOWUP}))
    assert v["2"]["verdict"] == NOT_REPRODUCED and v["3"]["verdict"] == NOT_REPRODUCED


def test_results_within_noise_are_inconclusive():
    same = [10.0, 9.9, 9.8, 9.9, 10.0, 10.1, 10.2]
    nearly = [10.05, 9.95, 9.85, 9.95, 10.05, 10.15, 10.25]
    off_centre = {
        **PAPER_BIAS,
        "rope": bias_seeds((0.01, 1.0, 0.0), (-0.02, 1.0, 0.0), (0.03, 1.0, 0.0)),
        "tapa": bias_seeds((0.5, 1.0, 0.0), (0.45, 1.0, 0.0), (0.55, 1.0, 0.0)),
    }
    v = all_verdicts(
        synthetic(
            {"rope": same, "tapa": nearly, "tapa_linear": same},
            {"rope": same, "tapa": nearly, "tapa_linear": same},
            off_centre,
            seeds=3,
            far=PAPER_FAR,
        )
    )
    assert v["2"]["verdict"] == INCONCLUSIVE and v["3"]["verdict"] == INCONCLUSIVE
    assert v["5"]["verdict"] == NOT_REPRODUCED  # TAPA's mean is half a std from zero on every seed
    assert v["1"]["verdict"] == REPRODUCED  # within a few percent at <= L0


def quadratic_vs_linear(ratios: list[float]) -> dict:
    """Results where linear/quadratic on seed s is ratios[s] at every length."""
    results = synthetic({}, {})
    quad = {"lengths": {str(n): {"perplexity": 10.0} for n in LENGTHS}}
    results["finetuned"] = {
        "tapa": {str(s): quad for s in range(len(ratios))},
        "tapa_linear": {
            str(s): {"lengths": {str(n): {"perplexity": 10.0 * r} for n in LENGTHS}} for s, r in enumerate(ratios)
        },
    }
    return all_verdicts(results)["4"]


def test_claim_4_is_paired_by_seed_and_needs_three_seeds():
    assert quadratic_vs_linear([1.06, 1.05, 1.07])["verdict"] == REPRODUCED
    assert quadratic_vs_linear([0.95, 0.94, 0.96])["verdict"] == NOT_REPRODUCED
    # a 6% mean gap whose seeds straddle 1: the interval contains 1, so noise decides nothing
    noisy = quadratic_vs_linear([1.16, 0.97, 1.05])
    assert noisy["verdict"] == INCONCLUSIVE and "95% CI" in noisy["evidence"]
    # one seed, however clear, is not enough
    single = quadratic_vs_linear([1.30])
    assert single["verdict"] == INCONCLUSIVE and "needs >= 3 seeds with both phases, has 1" in single["evidence"]


def test_claim_5_needs_seeds_a_nope_control_and_the_papers_far_distance():
    base = synthetic({}, {}, PAPER_BIAS, far=PAPER_FAR)
    assert all_verdicts(base)["5"]["verdict"] == REPRODUCED
    far = all_verdicts({**base, "bias": {**base["bias"], "far": 5 * L0}})["5"]
    assert far["verdict"] == INCONCLUSIVE and "far distance 160 = 5.0 x L0" in far["evidence"]
    no_nope = {k: v for k, v in PAPER_BIAS.items() if k != "nope"}
    assert "no NoPE control" in all_verdicts(synthetic({}, {}, no_nope, far=PAPER_FAR))["5"]["evidence"]
    one_seed = {m: {"pooled": v["seeds"]["0"]} for m, v in PAPER_BIAS.items()}  # the old single-seed format
    assert "fewer than 3 seeds" in all_verdicts(synthetic({}, {}, one_seed, far=PAPER_FAR))["5"]["evidence"]
    # centred but no broader than a distance-blind NoPE: centring alone does not tell TAPA from it
    blind = {**PAPER_BIAS, "tapa": PAPER_BIAS["nope"]}
    assert all_verdicts(synthetic({}, {}, blind, far=PAPER_FAR))["5"]["verdict"] == INCONCLUSIVE


def test_unknown_preset_is_a_one_line_error(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "tapa.cli", "reproduce", "--preset", "huge", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "invalid choice: 'huge'" in res.stderr
    with pytest.raises(Exception, match="unknown 'huge'"):
        get_preset("huge")


def test_smoke_preset_resumes_after_kill_and_writes_a_complete_report(tmp_path):
    out = tmp_path / "rep"
    command = [
        sys.executable,
        "-m",
        "tapa.cli",
        "reproduce",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--quiet",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(out.glob("stages/*/result.json"))) < 4:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("stages/*/result.json")}
    assert len(finished) >= 4 and not (out / "results.json").exists()

    res = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # finished stages were not redone

    results = json.loads((out / "results.json").read_text())
    preset = get_preset("smoke")
    for method in (*preset.pretrain, "rope+pi", "rope+yarn", "rope+ntk"):
        assert set(results["zero_shot"][method]["0"]["lengths"]) == {str(n) for n in preset.eval_lengths}
    for method in preset.finetune:
        assert set(results["finetuned"][method]["0"]["lengths"]) == {str(n) for n in preset.eval_lengths}
    assert set(results["verdicts"]) == {"1", "2", "3", "4", "5"}
    stage_files = list(out.glob("stages/*/result.json"))
    total = sum(json.loads(p.read_text())["seconds"] for p in stage_files)
    assert results["stage_seconds"] == pytest.approx(total)  # compute time counts cached stages too
    assert results["verdicts"] == all_verdicts(results)  # the rules, applied to exactly the numbers written
    report = (out / "report.md").read_text()
    for section in (
        "## Verdicts",
        "## Table 2",
        "## Table 1",
        "## Table 3",
        "## Appendix I",
        "## Theory checks",
        "## Cost",
        "## Figures",
        "## Configuration",
        "Left out by this preset",
    ):
        assert section in report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "<table>" in page

    # a moved reproduce folder keeps every finished stage (paths inside it are stored as $OUT/...)
    moved = tmp_path / "moved"
    out.rename(moved)
    stamps = {p.relative_to(moved): p.stat().st_mtime_ns for p in moved.glob("stages/*/result.json")}
    moved_command = [str(moved) if part == str(out) else part for part in command]
    again = subprocess.run(moved_command, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr
    assert {p.relative_to(moved): p.stat().st_mtime_ns for p in moved.glob("stages/*/result.json")} == stamps
    assert json.loads((moved / "results.json").read_text())["verdicts"] == results["verdicts"]


def test_grid_and_passkey_stages_run_in_a_tiny_preset(tmp_path):
    from dataclasses import replace

    from tapa.reproduce.pipeline import run_reproduce

    preset = replace(
        get_preset("smoke"),
        name="tiny",
        pretrain=("rope", "tapa"),
        finetune=("tapa",),
        zero_shot_scaling=("pi",),
        alpha_theta_grid=((0.5, 0.5),),
        passkey_steps=1,
        passkey_trials=1,
        eval_tokens=600,
        bias_pairs=20,
        theory_samples=5000,
        seq_len=64,
    )
    results = run_reproduce(preset, tmp_path / "out", cache_dir=str(tmp_path / "cache"), verbose=False)
    assert set(results["grid"]) == {"tapa_a0.5_t0.5"}
    assert len(results["passkey"]["tapa"]["0"]["cells"]) == 2 * 3  # 2 lengths x 3 depths
    assert "## Beyond the paper: alpha x theta" in (tmp_path / "out" / "report.md").read_text()
    figures = {p.name for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert {"perplexity_by_length.png", "positions.png", "bias.png", "passkey_tapa_s0.png"} <= figures

    # zero-shot PI: no scaling at or below L0 (equal to RoPE), factor min(8, L / L0) above, and the
    # number at 2 L0 equals a direct evaluation of the model rescaled with PI x2
    from tapa.evaluate.perplexity import evaluate_perplexity
    from tapa.model import load_pretrained
    from tapa.model.scaling import scaled_model_config, with_config
    from tapa.reproduce.pipeline import Reproduction

    rope, pi = results["zero_shot"]["rope"]["0"]["lengths"], results["zero_shot"]["rope+pi"]["0"]["lengths"]
    for n in preset.eval_lengths:
        assert pi[str(n)]["scale_factor"] == max(1.0, min(8.0, n / preset.seq_len))
        if n <= preset.seq_len:
            assert pi[str(n)]["perplexity"] == rope[str(n)]["perplexity"]
    model = load_pretrained(results["pretrain"]["rope"]["0"]["run"])
    model = with_config(model, scaled_model_config(model.config, preset.seq_len, pi=2.0)).eval()
    docs = Reproduction(preset, tmp_path / "out", cache_dir=str(tmp_path / "cache"), verbose=False).docs
    direct = evaluate_perplexity(model, docs, 2 * preset.seq_len, preset.seq_len // 2, batch_size=4).perplexity
    assert pi[str(2 * preset.seq_len)]["perplexity"] == pytest.approx(direct, rel=1e-5)
    assert pi[str(2 * preset.seq_len)]["perplexity"] != pytest.approx(rope[str(2 * preset.seq_len)]["perplexity"])


def test_bpe_preset_with_controls_runs_end_to_end(tmp_path):
    """smoke-bpe: one BPE trained once and shared by every stage, explicit head width, a
    per-method LR, the partial-RoPE and learnable-M/N TAPA controls; the report says BPE,
    carries the toy banner, each verdict's rule and a caption under every figure."""
    from tapa.data.tokenizer import load_checkpoint_tokenizer
    from tapa.model import load_pretrained
    from tapa.reproduce.pipeline import run_reproduce

    preset = get_preset("smoke-bpe")
    out = tmp_path / "out"
    results = run_reproduce(preset, out, cache_dir=str(tmp_path / "cache"), verbose=False)
    shared = (out / "tokenizer" / "tokenizer.json").read_text()
    for method in preset.pretrain:
        run = results["pretrain"][method]["0"]["run"]
        assert (Path(run) / "tokenizer.json").read_text() == shared  # one vocabulary for every method
        config = json.loads((Path(run) / "train_config.json").read_text())
        assert config["lr"] == (4e-4 if method == "tapa" else None)
    assert load_checkpoint_tokenizer(out / "tokenizer").vocab_size == preset.bpe_vocab
    partial = load_pretrained(results["pretrain"]["rope_partial"]["0"]["run"]).config
    assert partial.partial_rotary_factor == 0.5 and partial.rotary_dim == 16
    assert load_pretrained(results["finetune"]["tapa_full"]["0"]["run"]).config.tapa_phase == "quadratic_full"
    for method in preset.finetune:
        assert set(results["finetuned"][method]["0"]["lengths"]) == {str(n) for n in preset.eval_lengths}
    # the second seed runs only the seeded methods (and RoPE's inference-time scaling rows)
    assert {m for m, seeds in results["pretrain"].items() if "1" in seeds} == {"rope", "tapa"}
    assert {m for m, seeds in results["finetuned"].items() if "1" in seeds} == {"rope", "tapa"}
    assert "1" in results["zero_shot"]["rope+yarn"] and "1" not in results["zero_shot"]["tapa_full"]
    report = (out / "report.md").read_text()
    assert "BPE tokens (vocabulary 512" in report and "per BPE token" in report and "smoke-scale preset" in report
    assert all(v["threshold"] in report for v in results["verdicts"].values())
    figures = sorted((out / "figures").glob("*.png"))
    assert figures and report.count("*Figure: ") == len(figures)


@pytest.mark.slow
def test_gpu_dry_preset_runs_the_gpu_code_paths_end_to_end(tmp_path):
    """gpu-dry: the gpu preset's methods, grid, passkey, bf16 autocast and torch.compile, at a
    CPU size; every stage's training config says bf16 + compile, and the report is written."""
    from tapa.reproduce.pipeline import run_reproduce

    preset = get_preset("gpu-dry")
    gpu = get_preset("gpu")
    assert (preset.pretrain, preset.finetune, preset.precision, preset.compile) == (
        gpu.pretrain,
        gpu.finetune,
        gpu.precision,
        gpu.compile,
    )
    results = run_reproduce(preset, tmp_path / "out", cache_dir=str(tmp_path / "cache"), verbose=False)
    for stage in ("pretrain", "finetune"):
        for method, seeds in results[stage].items():
            config = json.loads((Path(seeds["0"]["run"]) / "train_config.json").read_text())
            assert config["precision"] == "bf16" and config["compile"] is True, (stage, method)
            assert math.isfinite(seeds["0"]["val_loss"])
    assert results["passkey"] and results["grid"]
    assert "smoke-scale preset" in (tmp_path / "out" / "report.md").read_text()


def test_rejudge_rewrites_verdicts_from_results_json_and_refuses_a_folder_without_one(tmp_path, capsys):
    from tapa.cli import main

    assert main(["reproduce", "--rejudge", "--out", str(tmp_path)]) == 2
    assert "has no results.json" in capsys.readouterr().err
    results = synthetic({"tapa": [10.0] * 7, "tapa_linear": [11.0] * 7}, {}, seeds=3)
    results["verdicts"] = {"4": {"verdict": "stale"}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    import tapa.reproduce.report as report  # rejudge imports its writer on call: patch the module

    called = []
    original, report.write_report = report.write_report, lambda r, out: called.append(out)
    try:
        assert main(["reproduce", "--rejudge", "--out", str(tmp_path)]) == 0
    finally:
        report.write_report = original
    rejudged = json.loads((tmp_path / "results.json").read_text())["verdicts"]
    assert rejudged["4"]["verdict"] == REPRODUCED and called == [tmp_path]
