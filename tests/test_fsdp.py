"""FSDP2 (``--parallel fsdp``) with 2 CPU processes over gloo: the same losses as one
process, exact kill -9 resume, sharded -> safetensors conversion, bf16 mixed precision,
and the initialisation rule (meta device, one parameter at a time)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tapa.cli import main
from tapa.model import ModelConfig, TapaLM, load_pretrained, save_pretrained
from tapa.train.checkpoints import list_checkpoints
from tapa.train.metrics import read_metrics

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
pytestmark = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun missing")
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = [
    "--d-model",
    "32",
    "--n-layers",
    "2",
    "--n-heads",
    "2",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--eval-every",
    "0",
    "--no-progress",
]


# torch's gloo teardown can abort a rank with this message (SIGABRT), also after the rank's
# work is done; PyTorch's own FSDP tests hit it too (pytorch/pytorch#90549). It happened in this
# project's suite a few times (once twice in a row, in a clean-clone CI run of 2026-12-06), never
# in dozens of runs of the same commands alone. A run that dies of it is run again, up to twice
# more: from scratch (its --out removed), or, resuming, resumed again. Any other failure, or the
# same abort three times, still fails the test.
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"
GLOO_RETRIES = 2


def run_ranks(command: list[str], out: str | None = None, resume: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    for _ in range(GLOO_RETRIES):
        if res.returncode == 0 or GLOO_TEARDOWN_ABORT not in res.stderr:
            break
        if out is not None and not resume:
            shutil.rmtree(out, ignore_errors=True)
        res = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD)
    return res


def torchrun(n: int, *args: str) -> subprocess.CompletedProcess:
    command = [TORCHRUN, "--standalone", f"--nproc-per-node={n}", "-m", "tapa.cli", *args]
    out = args[args.index("--out") + 1] if "--out" in args else None
    return run_ranks(command, out=out, resume="--resume" in args)


def plain(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tapa.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=ONE_THREAD)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fsdp_cache"))


def test_fsdp_two_processes_follow_one_process_from_the_same_weights(tmp_path, cache):
    """20 steps fine-tuned from one checkpoint: FSDP over 2 ranks vs the plain single-process trainer."""
    torch.manual_seed(0)
    start = TapaLM(ModelConfig(vocab_size=259, d_model=32, n_layers=2, n_heads=2, max_seq_len=32))
    save_pretrained(start, tmp_path / "start")
    (tmp_path / "start" / "tokenizer_config.json").write_text(json.dumps({"type": "byte"}))
    args = [
        "finetune",
        str(tmp_path / "start"),
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--no-progress",
        "--steps",
        "20",
        "--save-every",
        "10",
        "--cache-dir",
        cache,
    ]
    one = plain(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(2, *args, "--out", str(tmp_path / "two"), "--parallel", "fsdp")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert sorted(b) == list(range(1, 21))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-5, abs=1e-6), step
    wa, wb = load_pretrained(tmp_path / "one").state_dict(), load_pretrained(tmp_path / "two").state_dict()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)
    # the sharded checkpoint converts to a plain folder with the same weights (and logits)
    assert main(["consolidate", str(list_checkpoints(tmp_path / "two")[-1]), "--out", str(tmp_path / "plain")]) == 0
    consolidated = load_pretrained(tmp_path / "plain")
    ids = torch.randint(0, 259, (2, 32))
    with torch.no_grad():
        assert torch.equal(consolidated(ids), load_pretrained(tmp_path / "two")(ids))


@pytest.mark.slow
def test_fsdp_kill_9_then_resume_is_bit_identical(tmp_path, cache):
    args = [
        "train",
        *TINY,
        "--steps",
        "12",
        "--save-every",
        "2",
        "--keep-last",
        "2",
        "--parallel",
        "fsdp",
        "--cache-dir",
        cache,
    ]
    full = torchrun(2, *args, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = tmp_path / "killed"
    command = [TORCHRUN, "--standalone", "--nproc-per-node=2", "-m", "tapa.cli", *args, "--out", str(killed)]
    proc = subprocess.Popen(
        command, env=ONE_THREAD, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not (killed / "checkpoints" / "step_00000006").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill"
    resumed = torchrun(2, *args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_metrics(killed) == read_metrics(tmp_path / "full")
    a, b = load_pretrained(tmp_path / "full").state_dict(), load_pretrained(killed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the run stays sharded: resuming it as a DDP run is refused, with the fix
    shutil.rmtree(killed / "checkpoints" / "step_00000012")
    (killed / "model.safetensors").unlink()
    res = plain(*args[:-4], "--parallel", "ddp", "--cache-dir", cache, "--out", str(killed), "--resume")
    assert res.returncode == 2 and "--parallel ddp differs from the run's fsdp" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1


@pytest.mark.slow
def test_fsdp_bf16_mixed_precision_trains(tmp_path, cache):
    args = ["train", *TINY, "--steps", "4", "--save-every", "4", "--parallel", "fsdp", "--cache-dir", cache]
    fp32 = torchrun(2, *args, "--out", str(tmp_path / "fp32"))
    bf16 = torchrun(2, *args, "--out", str(tmp_path / "bf16"), "--precision", "bf16")
    for run in (fp32, bf16):  # stdout too: it shows how far training got before a crash
        assert run.returncode == 0, run.stdout[-1500:] + run.stderr[-3000:]
    a, b = read_metrics(tmp_path / "fp32"), read_metrics(tmp_path / "bf16")
    for step in a:  # bf16 compute, float32 master weights and reduction: close to float32, not equal
        assert b[step] == pytest.approx(a[step], rel=2e-2) and b[step] != a[step]
    assert load_pretrained(tmp_path / "bf16").embed.weight.dtype == torch.float32


INIT_SCRIPT = """
import sys, torch, torch.distributed as dist
from tapa.model import ModelConfig
from tapa.train.fsdp import build_sharded, full_model
dist.init_process_group("gloo")
config = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, tapa_phase="quadratic_full")
model = build_sharded(config, 7, torch.device("cpu"), "fp32", None, dist.get_rank())
plain = full_model(model)
if dist.get_rank() == 0:
    torch.save(plain.state_dict(), sys.argv[1])
dist.destroy_process_group()
"""


def test_fsdp_initial_weights_follow_the_rule_and_do_not_depend_on_world_size(tmp_path):
    """Built on the meta device and materialised sharded: 1 and 2 ranks give the same initial
    weights, and every weight follows reset_parameters' rule (stds, unit norms, Eq. 13 M/N)."""
    (tmp_path / "init.py").write_text(INIT_SCRIPT)
    for n in (1, 2):
        command = [
            TORCHRUN,
            "--standalone",
            f"--nproc-per-node={n}",
            str(tmp_path / "init.py"),
            str(tmp_path / f"{n}.pt"),
        ]
        res = run_ranks(command)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = torch.load(tmp_path / "1.pt"), torch.load(tmp_path / "2.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["lm_head.weight"].data_ptr() == a["embed.weight"].data_ptr() or torch.equal(
        a["lm_head.weight"], a["embed.weight"]
    )
    config = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, tapa_phase="quadratic_full")
    reference = TapaLM(config).state_dict()  # the plain init, for the rule
    assert set(a) == set(reference)
    for name, value in a.items():
        ref = reference[name]
        if name.endswith("norm.weight") or name.endswith((".m", ".n")):
            assert torch.equal(value, ref), name  # deterministic: equal
        else:  # random: the same distribution, not the same draw
            assert value.std().item() == pytest.approx(ref.std().item(), rel=0.15), name
            assert not torch.equal(value, ref)
    assert a["blocks.0.attn.wo.weight"].std() < 0.7 * a["blocks.0.attn.wq.weight"].std()  # 1/sqrt(2 n_layers)


def test_fsdp_outside_torchrun_is_one_line(tmp_path, cache):
    res = plain(
        "train", *TINY, "--steps", "1", "--parallel", "fsdp", "--out", str(tmp_path / "x"), "--cache-dir", cache
    )
    assert res.returncode == 2 and "runs under torchrun" in res.stderr and res.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()
