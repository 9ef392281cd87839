"""Training: schedule, exact resume after kill -9, checkpoint integrity, accumulation, bf16,
fine-tuning options, DDP under torchrun, and one-line errors for bad input."""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tapa.data.tokenizer import Bytes
from tapa.errors import CheckpointError, ConfigError
from tapa.model import ModelConfig, load_pretrained
from tapa.model.scaling import scaled_model_config
from tapa.train import checkpoints as ckpt_mod
from tapa.train.checkpoints import list_checkpoints, resolve_resume
from tapa.train.config import TrainConfig
from tapa.train.metrics import read_metrics, tensorboard_tag
from tapa.train.run_dir import checkpoint_step
from tapa.train.schedule import WarmupCosine
from tapa.train.trainer import _build_model, _check_vocab, run_training

TINY = ["--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32", "--batch-size", "4"]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token_cache"))


def tiny_config(out, cache_dir, **changes):
    model = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=32, positional=changes.pop("positional", "tapa"))
    base = dict(out=str(out), seq_len=32, batch_size=4, steps=12, eval_every=0, save_every=4, eval_segments=8)
    return TrainConfig(**{**base, **changes}, cache_dir=cache_dir, model=model)


# tiny models run fastest (and identically from run to run) on one thread
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, cache_dir=None, timeout=300):
    extra = ["--cache-dir", cache_dir] if cache_dir else []
    return subprocess.run(
        [sys.executable, "-m", "tapa.cli", *args, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ONE_THREAD,
    )


def tree_digest(path: Path) -> dict[str, str]:
    files = (p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_warmup_cosine_closed_form():
    s = WarmupCosine(warmup=10, total=110, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0) and s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 120))


def test_train_writes_a_loadable_model_metrics_and_checkpoints(tmp_path, cache_dir):
    result = run_training(tiny_config(tmp_path / "run", cache_dir, keep_last=2), progress=False)
    run = tmp_path / "run"
    assert [checkpoint_step(p) for p in list_checkpoints(run)] == [8, 12]  # keep_last=2
    losses = read_metrics(run)
    assert sorted(losses) == list(range(1, 13)) and losses[12] == result.final_loss
    assert losses[12] < losses[1]  # it learns
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(records[0])
    assert read_metrics(run, "val_bpb")[12] == pytest.approx(result.val_bpb)
    # bits per byte of a byte model = nats per token / ln 2 (EOS tokens aside)
    assert result.val_bpb == pytest.approx(result.val_loss / math.log(2), rel=0.02)
    model = load_pretrained(run)  # the run directory is itself a checkpoint
    state = torch.load(list_checkpoints(run)[-1] / "trainer_state.pt", weights_only=True)
    assert state["step"] == 12 and state["sequences_seen"] == 48 and "exp_avg" in str(state["optimizer"])
    for name, tensor in load_pretrained(list_checkpoints(run)[-1]).state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name])


def test_tensorboard_events_when_installed(tmp_path, cache_dir):
    pytest.importorskip("tensorboard")
    run_training(tiny_config(tmp_path / "run", cache_dir, steps=2), progress=False)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_kill_9_then_resume_reproduces_every_loss(tmp_path, cache_dir):
    steps = 150
    args = ["train", *TINY, "--steps", str(steps), "--save-every", "10", "--eval-every", "0", "--no-progress"]
    full = cli(*args, "--out", str(tmp_path / "full"), cache_dir=cache_dir)
    assert full.returncode == 0, full.stderr
    reference = read_metrics(tmp_path / "full")

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "tapa.cli", *args, "--out", str(killed), "--cache-dir", cache_dir]
    proc = subprocess.Popen(command, env=ONE_THREAD)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 35:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    logged = read_metrics(killed)
    assert max(logged) < steps, "the run finished before it could be killed"
    last_ckpt = checkpoint_step(list_checkpoints(killed)[-1])
    assert 30 <= last_ckpt < steps

    resumed = cli(*args, "--out", str(killed), "--resume", cache_dir=cache_dir)
    assert resumed.returncode == 0, resumed.stderr
    after = read_metrics(killed)
    assert sorted(after) == list(range(1, steps + 1))
    assert after == reference  # bit-for-bit, every step before and after the kill


def test_corrupt_latest_checkpoint_is_reported_and_the_previous_one_still_resumes(tmp_path, cache_dir):
    run = tmp_path / "run"
    run_training(tiny_config(run, cache_dir, steps=12, save_every=4), progress=False)
    reference = read_metrics(run)
    step4, step8, step12 = list_checkpoints(run)
    weights = step12 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern deep in the tensor data
    weights.write_bytes(bytes(data))
    before = tree_digest(run)

    res = cli("train", "--out", str(run), "--resume", "--no-progress", cache_dir=cache_dir)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "step_00000012/model.safetensors is corrupt" in res.stderr and f"--resume {step8}" in res.stderr
    assert tree_digest(run) == before  # nothing written over

    (step8 / "trainer_state.pt").write_bytes((step8 / "trainer_state.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        resolve_resume(run, str(step8))
    with pytest.raises(CheckpointError, match=f"--resume {step4}"):
        resolve_resume(run, "latest")

    run_training(tiny_config(run, cache_dir, steps=12, save_every=4), resume=str(step4), progress=False)
    assert read_metrics(run) == reference


def test_kill_during_checkpoint_write_leaves_no_partial_checkpoint(tmp_path, cache_dir, monkeypatch):
    run = tmp_path / "run"
    real_save = torch.save
    calls = []

    def dying_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint dies mid-write
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_config(run, cache_dir, steps=12, save_every=4), progress=False)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000004"]
    assert resolve_resume(run, "latest").name == "step_00000004"


def test_gradient_accumulation_matches_the_full_batch(tmp_path, cache_dir):
    one = run_training(tiny_config(tmp_path / "a", cache_dir, steps=5, batch_size=8), progress=False)
    acc = run_training(tiny_config(tmp_path / "b", cache_dir, steps=5, batch_size=8, grad_accum=4), progress=False)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert all(a[s] == pytest.approx(b[s], rel=1e-5) for s in a)
    assert one.val_loss == pytest.approx(acc.val_loss, rel=1e-5)


def test_bf16_autocast_trains_close_to_fp32(tmp_path, cache_dir):
    run_training(tiny_config(tmp_path / "a", cache_dir, steps=4), progress=False)
    run_training(tiny_config(tmp_path / "b", cache_dir, steps=4, precision="bf16"), progress=False)
    fp32, bf16 = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert bf16[1] != fp32[1] and bf16[1] == pytest.approx(fp32[1], rel=0.02)
    assert all(math.isfinite(v) for v in bf16.values())


def test_seeded_runs_are_reproducible(tmp_path, cache_dir):
    run_training(tiny_config(tmp_path / "a", cache_dir, steps=3, seed=5), progress=False)
    run_training(tiny_config(tmp_path / "b", cache_dir, steps=3, seed=5), progress=False)
    run_training(tiny_config(tmp_path / "c", cache_dir, steps=3, seed=6), progress=False)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b") != read_metrics(tmp_path / "c")


def test_finetune_scaling_options_map_to_rope_configs():
    rope = ModelConfig(positional="rope", max_seq_len=256, rope_base=1e4)
    assert scaled_model_config(rope, 1024, pi=8).rope_scaling == {"rope_type": "linear", "factor": 8}
    yarn = scaled_model_config(rope, 1024, yarn=8).rope_scaling
    assert yarn == {"rope_type": "yarn", "factor": 8, "original_max_position_embeddings": 256}
    assert scaled_model_config(rope, 1024, ntk=4).rope_scaling == {"rope_type": "ntk", "factor": 4}
    abf = scaled_model_config(rope, 1024, rope_base=5e6)
    assert abf.rope_base == 5e6 and abf.rope_scaling is None and abf.max_seq_len == 1024
    assert scaled_model_config(ModelConfig(), 1024).max_seq_len == 1024  # TAPA continues unchanged
    for scheme in ("tapa", "nope", "alibi"):
        with pytest.raises(ConfigError, match=f"uses '{scheme}', which continues unchanged"):
            scaled_model_config(ModelConfig(positional=scheme), 1024, yarn=8)
    with pytest.raises(ConfigError, match="alternatives"):
        scaled_model_config(rope, 1024, pi=8, ntk=2)
    with pytest.raises(ConfigError, match="must be > 1"):
        scaled_model_config(rope, 1024, pi=0.5)


def test_finetune_starts_from_the_checkpoint_at_4x_length(tmp_path, cache_dir):
    base = tmp_path / "base"
    run_training(tiny_config(base, cache_dir, steps=3, positional="rope"), progress=False)
    res = cli(
        "finetune",
        str(base),
        "--out",
        str(tmp_path / "ft"),
        "--pi",
        "4",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        cache_dir=cache_dir,
    )
    assert res.returncode == 0, res.stderr
    config = TrainConfig.load(tmp_path / "ft" / "train_config.json")
    assert config.seq_len == 128 and config.model.max_seq_len == 128 and config.init_from == str(base)
    assert config.model.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert config.peak_lr == pytest.approx(0.2 * TrainConfig(model=ModelConfig(positional="rope")).peak_lr)
    start = _build_model(config)  # before any fine-tuning step: the pretrained weights
    for name, tensor in load_pretrained(base).state_dict().items():
        assert torch.equal(start.state_dict()[name], tensor)
    assert load_pretrained(tmp_path / "ft").config.rope_scaling["factor"] == 4.0


def test_rope_scaling_json_reads_as_transformers_reads_it():
    """--rope-scaling JSON: the legacy 'type' key, rope_theta and partial_rotary_factor inside
    the dict, the original length from the checkpoint; the frequencies equal transformers'."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tapa.hf.config import rope_scaling_changes
    from tapa.positional import rope_inv_freq

    rope = ModelConfig(positional="rope", max_seq_len=256, rope_base=1e4, d_model=64, n_heads=2)
    legacy = rope_scaling_changes('{"type": "yarn", "factor": 8}', rope, 256, "finetune")
    assert legacy["rope_scaling"] == scaled_model_config(rope, 2048, yarn=8).rope_scaling
    changes = rope_scaling_changes(
        '{"rope_type": "yarn", "factor": 4, "rope_theta": 20000, "beta_fast": 16}', rope, 256, "finetune"
    )
    assert changes["rope_base"] == 2e4 and changes["rope_scaling"]["original_max_position_embeddings"] == 256
    hf = LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "yarn",
            "factor": 4.0,
            "rope_theta": 2e4,
            "beta_fast": 16.0,
            "original_max_position_embeddings": 256,
        },
    )
    hf_freq, hf_scale = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    ours = rope.replace(max_seq_len=1024, **changes)
    params = {k: v for k, v in ours.rope_scaling.items() if k != "rope_type"}
    freq, scale = rope_inv_freq("yarn", 32, ours.rope_base, **params)
    torch.testing.assert_close(freq.float(), hf_freq.float(), rtol=1e-6, atol=0)
    assert scale == pytest.approx(hf_scale)
    dynamic = rope_scaling_changes('{"type": "dynamic", "factor": 2}', rope, 256, "finetune")
    assert dynamic["rope_scaling"] == {"rope_type": "dynamic", "factor": 2, "max_position_embeddings": 256}
    partial = rope_scaling_changes(
        '{"rope_type": "linear", "factor": 2, "partial_rotary_factor": 0.5}', rope, 256, "train"
    )
    assert partial["partial_rotary_factor"] == 0.5 and partial["rope_scaling"] == {"rope_type": "linear", "factor": 2}
    with pytest.raises(ConfigError, match="not valid JSON"):
        rope_scaling_changes("{yarn", rope, 256, "train")
    with pytest.raises(ConfigError, match="rope_type 'su' is not one tapa implements"):
        rope_scaling_changes('{"type": "su", "factor": 2}', rope, 256, "train")
    with pytest.raises(ConfigError, match="which continues unchanged"):
        rope_scaling_changes('{"type": "linear", "factor": 2}', ModelConfig(), 256, "train")


def test_rope_scaling_flag_trains_and_finetunes(tmp_path, cache_dir):
    res = cli(
        "train",
        "--out",
        str(tmp_path / "base"),
        *TINY,
        "--steps",
        "2",
        "--positional",
        "rope",
        "--rope-scaling",
        '{"type": "linear", "factor": 2, "rope_theta": 5e4}',
        "--no-progress",
        cache_dir=cache_dir,
    )
    assert res.returncode == 0, res.stderr
    base = load_pretrained(tmp_path / "base").config
    assert base.rope_scaling == {"rope_type": "linear", "factor": 2} and base.rope_base == 5e4
    res = cli(
        "finetune",
        str(tmp_path / "base"),
        "--out",
        str(tmp_path / "ft"),
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--rope-scaling",
        '{"type": "yarn", "factor": 4, "extra_key": 1}',
        "--no-progress",
        cache_dir=cache_dir,
    )
    assert res.returncode == 0, res.stderr
    assert "ignoring keys extra_key" in res.stderr  # unknown keys warn, as in transformers
    ft = TrainConfig.load(tmp_path / "ft" / "train_config.json").model
    assert ft.rope_scaling == {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 32}
    assert ft.rope_base == 5e4 and ft.max_seq_len == 128
    res = cli(
        "finetune",
        str(tmp_path / "base"),
        "--out",
        str(tmp_path / "ft2"),
        "--rope-scaling",
        '{"type": "yarn"}',
        cache_dir=cache_dir,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "factor" in res.stderr
    assert not (tmp_path / "ft2").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "MISSING"], "does not exist"),
        (["--data", "EMPTY"], "is empty"),
        (["--seq-len", "2000000", "--max-seq-len", "2000000"], "longer than every train document"),
        (["--positional", "xpos"], "invalid choice: 'xpos'"),
        (["--batch-size", "6", "--grad-accum", "4"], "multiple of grad_accum"),
        (["--lr", "3"], "lr: must be in (0, 1)"),
    ],
)
def test_bad_training_input_is_one_line_exit_2_and_writes_nothing(tmp_path, cache_dir, args, message):
    (tmp_path / "empty.txt").write_text("")
    args = [
        str(tmp_path / "empty.txt") if a == "EMPTY" else str(tmp_path / "no.txt") if a == "MISSING" else a for a in args
    ]
    res = cli("train", "--out", str(tmp_path / "run"), *args, cache_dir=cache_dir)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_finetuning_tapa_with_a_rope_option_is_refused_and_writes_nothing(tmp_path, cache_dir):
    run_training(tiny_config(tmp_path / "base", cache_dir, steps=1), progress=False)
    res = cli("finetune", str(tmp_path / "base"), "--out", str(tmp_path / "ft"), "--yarn", "8", cache_dir=cache_dir)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "continues unchanged at any length" in res.stderr and not (tmp_path / "ft").exists()


def test_existing_run_is_never_overwritten(tmp_path, cache_dir):
    run = tmp_path / "run"
    run_training(tiny_config(run, cache_dir, steps=2, save_every=0), progress=False)
    before = tree_digest(run)
    res = cli("train", "--out", str(run), *TINY, "--steps", "2", cache_dir=cache_dir)
    assert res.returncode == 2 and "already holds a training run; pass --resume" in res.stderr
    res = cli("train", "--out", str(run), "--resume", "--lr", "0.1", cache_dir=cache_dir)
    assert res.returncode == 2 and "--lr 0.1 differs" in res.stderr
    assert tree_digest(run) == before


@pytest.mark.skipif(not shutil.which("torchrun", path=os.path.dirname(sys.executable)), reason="torchrun missing")
def test_torchrun_two_processes_follow_the_single_process_loss_curve(tmp_path, cache_dir):
    args = [*TINY[:-2], "--batch-size", "8", "--steps", "8", "--eval-every", "0", "--save-every", "4", "--no-progress"]
    single = cli("train", "--out", str(tmp_path / "one"), *args, cache_dir=cache_dir)
    assert single.returncode == 0, single.stderr
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    ddp = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "tapa.cli",
            "train",
            "--out",
            str(tmp_path / "two"),
            *args,
            "--cache-dir",
            cache_dir,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=ONE_THREAD,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert sorted(two) == list(range(1, 9))
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-4), step
    assert len(list_checkpoints(tmp_path / "two")) == 2  # written once, by rank 0


def test_resume_into_a_copy_and_after_a_move_writes_only_there(tmp_path, cache_dir):
    # --out wins over the folder stored in train_config.json: runs are relocatable
    args = ["train", *TINY, "--steps", "12", "--save-every", "4", "--eval-every", "0", "--no-progress"]
    full = cli(*args, "--out", str(tmp_path / "full"), cache_dir=cache_dir)
    assert full.returncode == 0, full.stderr
    reference = read_metrics(tmp_path / "full")

    original = tmp_path / "original"
    partial = cli(*args, "--out", str(original), cache_dir=cache_dir)
    assert partial.returncode == 0, partial.stderr
    # pretend the run stopped after step 8: drop the last checkpoint, the final model and the late metrics
    shutil.rmtree(list_checkpoints(original)[-1])
    lines = (original / "metrics.jsonl").read_text().splitlines()
    (original / "metrics.jsonl").write_text("\n".join(x for x in lines if json.loads(x).get("step", 0) <= 8) + "\n")
    for name in ("model.safetensors", "config.json"):
        (original / name).unlink(missing_ok=True)

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = tree_digest(original)
    res = cli("train", "--out", str(copy), "--resume", "--no-progress", cache_dir=cache_dir)
    assert res.returncode == 0, res.stderr
    assert tree_digest(original) == before  # the original is untouched
    assert read_metrics(copy) == reference

    moved = tmp_path / "moved"
    original.rename(moved)
    res = cli("train", "--out", str(moved), "--resume", "--no-progress", cache_dir=cache_dir)
    assert res.returncode == 0, res.stderr
    assert not original.exists()
    assert read_metrics(moved) == reference


def test_half_deleted_checkpoint_is_cleaned_on_resume_and_finished_run_says_so(tmp_path, cache_dir):
    args = ["train", *TINY, "--steps", "12", "--save-every", "4", "--keep-last", "3", "--eval-every", "0"]
    full = cli(*args, "--no-progress", "--out", str(tmp_path / "full"), cache_dir=cache_dir)
    assert full.returncode == 0, full.stderr
    reference = read_metrics(tmp_path / "full")

    run = tmp_path / "run"
    assert cli(*args, "--no-progress", "--out", str(run), cache_dir=cache_dir).returncode == 0
    step4, _step8, step12 = list_checkpoints(run)
    # a kill in the middle of an old-style deletion: step 4 keeps its manifest but lost its weights;
    # step 12 and the final model are gone too, so the run resumes from step 8
    (step4 / "model.safetensors").unlink()
    shutil.rmtree(step12)
    (run / "model.safetensors").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(x for x in lines if json.loads(x)["step"] <= 8) + "\n")
    (run / "checkpoints" / ".step_00000004.deleting").mkdir()  # a hidden leftover of an atomic deletion
    res = cli("train", "--out", str(run), "--resume", "--no-progress", cache_dir=cache_dir)
    assert res.returncode == 0, res.stderr
    assert not step4.exists() and not (run / "checkpoints" / ".step_00000004.deleting").exists()
    assert read_metrics(run) == reference

    again = cli("train", "--out", str(run), "--resume", cache_dir=cache_dir)
    assert again.returncode == 0 and "already finished all 12 steps" in again.stdout
    assert "nan" not in again.stdout

    # a finished run whose final model was damaged is not "there": one line with the fix, which works
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    damaged = cli("train", "--out", str(run), "--resume", cache_dir=cache_dir)
    assert damaged.returncode == 2 and damaged.stderr.count("\n") == 1, damaged.stderr
    assert "final model is damaged" in damaged.stderr and "already finished" not in damaged.stdout
    weights.unlink()
    fixed = cli("train", "--out", str(run), "--resume", "--no-progress", cache_dir=cache_dir)
    assert fixed.returncode == 0, fixed.stderr
    assert cli("train", "--out", str(run), "--resume", cache_dir=cache_dir).returncode == 0


def test_tensorboard_tags_are_grouped_and_checkpoints_have_normal_permissions(tmp_path, cache_dir):
    from tapa.train.metrics import tensorboard_tag

    assert tensorboard_tag("loss") == "train/loss" and tensorboard_tag("lr") == "train/lr"
    assert tensorboard_tag("val_loss") == "val/loss" and tensorboard_tag("val_bpb") == "val/bpb"
    run = tmp_path / "run"
    run_training(tiny_config(run, cache_dir, steps=4, save_every=4), progress=False)
    mask = os.umask(0)
    os.umask(mask)
    (ckpt,) = list_checkpoints(run)
    assert ckpt.stat().st_mode & 0o777 == 0o777 & ~mask


def test_garbled_json_in_a_checkpoint_is_reported_as_invalid_json(tmp_path, cache_dir):
    run = tmp_path / "run"
    run_training(tiny_config(run, cache_dir, steps=4, save_every=4), progress=False)
    (ckpt,) = list_checkpoints(run)
    (ckpt / "config.json").write_text("{garbage")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        resolve_resume(run, "latest")


def last_logged_step(run: Path) -> int:
    """The highest step in a run's metrics so far; 0 before the file exists or while a line is half-written."""
    try:
        return max(read_metrics(run), default=0)
    except (FileNotFoundError, ValueError):
        return 0


def test_kill_9_at_random_points_then_resume_is_bit_identical(tmp_path, cache_dir):
    # kills land anywhere: during start-up, steps, checkpoint writes and the deletion of old
    # checkpoints (one every 2 steps, only 2 kept); every restart resumes with --resume
    import random

    steps = 40
    args = ["train", *TINY, "--steps", str(steps), "--save-every", "2", "--keep-last", "2", "--eval-every", "0"]
    args += ["--no-progress"]
    started = time.perf_counter()
    full = cli(*args, "--out", str(tmp_path / "full"), cache_dir=cache_dir)
    whole = time.perf_counter() - started  # kill times scale with this machine's speed
    assert full.returncode == 0, full.stderr
    reference = read_metrics(tmp_path / "full")

    run = tmp_path / "killed"
    base = [sys.executable, "-m", "tapa.cli", *args, "--out", str(run), "--cache-dir", cache_dir]
    rng = random.Random(1234)
    step_time = whole / steps  # an upper bound: it includes start-up

    def start(resume: bool) -> subprocess.Popen:
        command = base + (["--resume"] if resume else [])
        return subprocess.Popen(command, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
        ended = f"the run ended ({code}) before it could be killed: {proc.stderr.read().decode()}"
        assert code == -signal.SIGKILL, ended

    # the first kill lands early, in start-up or the first steps; the others are placed by
    # progress, not by wall time (a wall-time kill after a resume can come after the run ends):
    # once the run has logged a drawn step, it dies at a random point within the next two steps,
    # inside a step, a checkpoint write or the deletion of an old checkpoint
    proc = start(resume=False)
    time.sleep(rng.uniform(0.05, 0.3) * whole)
    kill(proc)
    targets = sorted(rng.sample(range(4, steps - 6), 3))
    for target in targets:
        # a kill before the run wrote its config leaves nothing to resume: start it again
        proc = start(resume=(run / "train_config.json").exists())
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and last_logged_step(run) < target:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 2.0) * step_time)
        kill(proc)
    assert last_logged_step(run) > targets[-1]
    res = cli(*args, "--out", str(run), "--resume", cache_dir=cache_dir)
    assert res.returncode == 0, res.stderr
    assert read_metrics(run) == reference  # bit-for-bit, across every kill
    assert load_pretrained(run).state_dict().keys() == load_pretrained(tmp_path / "full").state_dict().keys()
    for name, tensor in load_pretrained(run).state_dict().items():
        assert torch.equal(tensor, load_pretrained(tmp_path / "full").state_dict()[name]), name


@pytest.mark.parametrize("positional", ["tapa", "rope"])
def test_activation_checkpointing_gives_the_plain_step_loss_and_gradients(positional):
    """Recomputing each block in the backward pass changes memory, not numbers."""
    from tapa.model import ModelConfig, TapaLM

    torch.manual_seed(0)
    model = TapaLM(ModelConfig(positional=positional, vocab_size=50, d_model=32, n_layers=3, n_heads=2)).double()
    ids = torch.randint(0, 50, (2, 24))
    grads = []
    for checkpointed in (False, True):
        model.zero_grad()
        model.activation_checkpointing = checkpointed
        loss = model.train().loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (plain_loss, plain), (ckpt_loss, ckpt) = grads
    assert ckpt_loss == plain_loss
    for a, b in zip(plain, ckpt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_activation_checkpointing_flag_trains_and_is_recorded(tmp_path):
    from tapa.cli import main
    from tapa.train.config import TrainConfig

    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--steps",
        "2",
        "--d-model",
        "32",
        "--n-layers",
        "1",
        "--n-heads",
        "2",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--eval-segments",
        "2",
        "--no-progress",
        "--activation-checkpointing",
        "true",
    ]
    assert main(args) == 0
    assert TrainConfig.load(out / "train_config.json").activation_checkpointing is True
    assert "activation_checkpointing" not in TrainConfig().to_dict()  # the default is not written


def test_compiled_blocks_match_the_eager_step_and_train(tmp_path, cache_dir):
    """--compile: torch.compile of each block (TAPA's fused CPU kernel traced through its fake
    op): the same loss and gradients as the eager model, and a run that trains and saves
    the same parameter names."""
    import copy

    torch.manual_seed(0)
    config = tiny_config(tmp_path / "x", cache_dir)
    _check_vocab(config, Bytes())  # the model's vocabulary from the tokenizer, as a run sets it
    model = _build_model(config)
    compiled = copy.deepcopy(model)
    for block in compiled.blocks:
        block.compile()
    x, y = torch.randint(0, 259, (2, 32)), torch.randint(0, 259, (2, 32))
    eager_loss, compiled_loss = model.loss(x, y), compiled.loss(x, y)
    eager_loss.backward()
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    run = run_training(tiny_config(tmp_path / "run", cache_dir, steps=2, compile=True), progress=False)
    plain = run_training(tiny_config(tmp_path / "plain", cache_dir, steps=2), progress=False)
    assert run.final_loss == pytest.approx(plain.final_loss, rel=1e-5)
    assert set(load_pretrained(tmp_path / "run").state_dict()) == set(load_pretrained(tmp_path / "plain").state_dict())
    assert TrainConfig.load(tmp_path / "run" / "train_config.json").compile is True


def test_wandb_offline_logs_every_metric_and_a_resume_continues_the_run(tmp_path, cache_dir):
    pytest.importorskip("wandb")
    env = {**ONE_THREAD, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [
        sys.executable,
        "-m",
        "tapa.cli",
        "train",
        *TINY,
        "--steps",
        "4",
        "--save-every",
        "2",
        "--no-progress",
        "--wandb",
        "true",
        "--out",
        str(tmp_path / "run"),
        "--cache-dir",
        cache_dir,
    ]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    run_id = (tmp_path / "run" / "wandb_id").read_text().strip()
    (log_file,) = (tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = log_file.read_bytes()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for record in records:  # every value of the JSONL log reached W&B under its grouped name
        for key, value in record.items():
            if key not in ("step", "tokens_per_s"):
                assert tensorboard_tag(key).encode() in data and json.dumps(value).encode() in data, key
    assert TrainConfig.load(tmp_path / "run" / "train_config.json").wandb is True
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_00000004")
    (tmp_path / "run" / "model.safetensors").unlink()
    again = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "run" / "wandb_id").read_text().strip() == run_id  # the same W&B run continues


def test_wandb_missing_is_one_line(tmp_path, cache_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ConfigError, match=r"pip install 'tapa\[wandb\]'"):
        run_training(tiny_config(tmp_path / "run", cache_dir, steps=1, wandb=True), progress=False)
    assert not (tmp_path / "run").exists()


def _lrs(run):
    return read_metrics(run, "lr")


def test_extending_a_finished_run_follows_the_stated_schedule(tmp_path, cache_dir):
    """--resume --steps N --extend: constant keeps the final LR (min_lr_ratio x peak) for the added
    steps; cosine lays the warmup + cosine over the new total; the first steps are the original
    run's bit for bit. Without --extend a larger --steps is refused with the two choices."""
    from tapa.train.schedule import WarmupCosine

    args = ["train", *TINY, "--steps", "8", "--save-every", "4", "--eval-every", "0", "--no-progress"]
    base = tmp_path / "base"
    assert cli(*args, "--out", str(base), cache_dir=cache_dir).returncode == 0
    original = read_metrics(base)
    peak, warmup = 1e-3, 1  # TAPA's default peak; 5% of 8 steps rounds to a warmup of 1 (min 1)
    refused = cli("train", "--out", str(base), "--resume", "--steps", "12", cache_dir=cache_dir)
    assert refused.returncode == 2 and "--extend constant" in refused.stderr and "--extend cosine" in refused.stderr
    for extension in ("constant", "cosine"):
        run = tmp_path / extension
        shutil.copytree(base, run)
        res = cli(
            "train",
            "--out",
            str(run),
            "--resume",
            "--steps",
            "12",
            "--extend",
            extension,
            "--no-progress",
            cache_dir=cache_dir,
        )
        assert res.returncode == 0, res.stderr
        metrics, lrs = read_metrics(run), _lrs(run)
        assert sorted(metrics) == list(range(1, 13))
        assert {s: metrics[s] for s in original} == original  # the first 8 steps untouched
        total = 8 if extension == "constant" else 12
        schedule = WarmupCosine(warmup, total, 0.1)
        for step in range(9, 13):  # the LR logged at step s is the schedule's at index s - 1
            assert lrs[step] == pytest.approx(peak * schedule(step - 1), rel=1e-6), (extension, step)
        if extension == "constant":
            assert all(lrs[s] == pytest.approx(peak * 0.1) for s in range(9, 13))
        else:
            assert lrs[9] > lrs[8]  # stretched: the LR rises again at the resume point
        saved = json.loads((run / "train_config.json").read_text())
        assert saved["steps"] == 12 and saved.get("schedule_steps") == (8 if extension == "constant" else None)


def test_an_extension_killed_and_resumed_is_bit_identical(tmp_path, cache_dir):
    """kill -9 during an extension, then the same command again: the metrics equal an
    uninterrupted extension's, bit for bit."""
    import signal
    import time

    args = ["train", *TINY, "--steps", "6", "--save-every", "2", "--eval-every", "0", "--no-progress"]
    base = tmp_path / "base"
    assert cli(*args, "--out", str(base), cache_dir=cache_dir).returncode == 0
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    shutil.copytree(base, whole)
    shutil.copytree(base, killed)
    extend = [
        "train",
        "--resume",
        "--steps",
        "30",
        "--extend",
        "constant",
        "--save-every",
        "2",
        "--no-progress",
        "--cache-dir",
        cache_dir,
    ]
    assert cli(*extend[:-2], "--out", str(whole), cache_dir=cache_dir).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "tapa.cli", *extend, "--out", str(killed)],
        env=ONE_THREAD,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        logged = read_metrics(killed) if (killed / "metrics.jsonl").is_file() else {}
        if max(logged, default=0) >= 15:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the extension ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = cli(*extend[:-2], "--out", str(killed), cache_dir=cache_dir)
    assert res.returncode == 0, res.stderr
    assert read_metrics(killed) == read_metrics(whole)
    assert _lrs(killed) == _lrs(whole)
