"""Config validation and JSON round-trip; safetensors save/load and corrupt checkpoints."""

import json

import pytest
import torch

from tapa.errors import CheckpointError, ConfigError
from tapa.model import ModelConfig, TapaLM, load_pretrained, save_pretrained


def test_config_json_round_trip():
    c = ModelConfig(
        positional="rope",
        rope_base=5e5,
        rope_scaling={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256},
        n_kv_heads=2,
    )
    assert ModelConfig.from_json(c.to_json()) == c
    t = ModelConfig(tapa_alpha=0.2, tapa_theta=0.25, tapa_phase="quadratic_full")
    assert ModelConfig.from_json(t.to_json()) == t


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"positional": "xpos"}, r"positional: unknown scheme 'xpos'"),
        ({"n_heads": 5}, r"n_heads: 5 does not divide d_model=256"),
        ({"n_kv_heads": 3}, r"n_kv_heads: 3 does not divide n_heads=4"),
        ({"d_model": 0}, r"d_model: must be a positive integer"),
        ({"vocab_size": 2.5}, r"vocab_size: must be a positive integer"),
        ({"tapa_theta": 0.3}, r"tapa_theta: theta\*head_dim = 0.3\*64"),
        ({"tapa_alpha": 0}, r"tapa_alpha: must be a finite number > 0"),
        ({"tapa_phase": "cubic"}, r"tapa_phase: unknown 'cubic'"),
        ({"attn_impl": "flash"}, r"attn_impl: unknown 'flash'"),
        ({"norm_eps": -1.0}, r"norm_eps: must be a number > 0"),
        ({"positional": "rope", "rope_base": 0.5}, r"rope_base: the RoPE base must be a number > 1"),
        (
            {"positional": "rope", "rope_scaling": {"rope_type": "yarn", "factor": 8}},
            r"rope_scaling: 'yarn' needs original_max_position_embeddings",
        ),
        ({"positional": "rope", "rope_scaling": {"rope_type": "nope"}}, r"rope_type: unknown 'nope'"),
        (
            {"positional": "tapa", "rope_scaling": {"rope_type": "linear", "factor": 8}},
            r"rope_scaling: only applies to positional='rope', but positional='tapa'",
        ),
    ],
)
def test_config_errors_name_the_field(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        ModelConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_and_malformed_config():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) n_layer;"):
        ModelConfig.from_dict({"n_layer": 3})
    with pytest.raises(ConfigError, match=r"not valid JSON"):
        ModelConfig.from_json("{oops")


def test_save_load_round_trip_keeps_logits(tmp_path):
    for positional in ("tapa", "rope"):
        model = TapaLM(
            ModelConfig(
                d_model=64,
                n_layers=2,
                positional=positional,
                tapa_phase="quadratic_full" if positional == "tapa" else "quadratic",
            )
        ).eval()
        save_pretrained(model, tmp_path / positional)
        assert sorted(p.name for p in (tmp_path / positional).iterdir()) == [
            "config.json",
            "manifest.json",
            "model.safetensors",
        ]
        loaded = load_pretrained(tmp_path / positional).eval()
        assert loaded.config == model.config
        assert loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()  # still tied
        ids = torch.randint(0, 259, (1, 12))
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_missing_truncated_and_mismatched_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=r"no such directory"):
        load_pretrained(tmp_path / "nope")
    model = TapaLM(ModelConfig(d_model=64, n_layers=1))
    ckpt = save_pretrained(model, tmp_path / "ok")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated") as info:
        load_pretrained(ckpt)  # the manifest names the file
    assert "\n" not in str(info.value)
    (ckpt / "manifest.json").unlink()  # without a manifest the loader's own checks still hold
    with pytest.raises(CheckpointError, match=r"corrupt or truncated") as info:
        load_pretrained(ckpt)
    assert "\n" not in str(info.value)
    weights.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"corrupt or truncated"):
        load_pretrained(ckpt)
    save_pretrained(model, ckpt)
    (ckpt / "manifest.json").unlink()
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["d_model"] = 128
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"has shape .* config expects"):
        load_pretrained(ckpt)
    (ckpt / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"config.json: model config: not valid JSON"):
        load_pretrained(ckpt)
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json is missing"):
        load_pretrained(ckpt)


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    model = TapaLM(ModelConfig(d_model=64, n_layers=1))
    save_pretrained(model, tmp_path)
    save_pretrained(model, tmp_path)
    assert not list(tmp_path.glob(".*tmp"))


def test_flipped_bytes_in_a_saved_model_are_refused_on_load(tmp_path):
    from tapa.errors import CheckpointError
    from tapa.model import ModelConfig, TapaLM, load_pretrained, save_pretrained

    save_pretrained(TapaLM(ModelConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2)), tmp_path / "m")
    load_pretrained(tmp_path / "m")  # intact: loads
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit deep in the tensor data: safetensors itself cannot notice
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt"):
        load_pretrained(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").unlink()  # a plain folder without a manifest still loads
    load_pretrained(tmp_path / "m")


def test_resume_from_another_runs_checkpoint_is_refused(tmp_path):
    from tapa.errors import CheckpointError
    from tapa.train.checkpoints import resolve_resume

    other = tmp_path / "other" / "checkpoints" / "step_00000004"
    other.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not a checkpoint of the run"):
        resolve_resume(tmp_path / "mine", str(other))


def test_run_dir_knows_a_run_its_checkpoints_and_their_owner(tmp_path):
    from tapa.train.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    assert not run.holds_run() and not run.started() and run.checkpoints() == []
    for step, complete in ((20, True), (3, True), (100, False)):  # step_100 has no manifest: incomplete
        folder = run.checkpoint_root / f"step_{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "manifest.json").write_text("{}")
    (run.checkpoint_root / "step_x").mkdir()  # not a step
    assert run.holds_run() and not run.started()  # a checkpoints folder alone is a run never to overwrite
    assert [p.name for p in run.checkpoints()] == ["step_3", "step_20"]
    assert not run.finished(20)  # no final model yet
    run.model_file.write_bytes(b"")
    assert run.finished(20) and not run.finished(21)
    run.config_file.write_text("{}")
    assert run.started()
    assert RunDir.owning(run.checkpoint_root / "step_3" / "eval") == run
    assert RunDir.owning(run.path / "eval") is None and RunDir.owning(tmp_path) is None
