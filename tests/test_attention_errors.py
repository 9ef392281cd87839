"""Bad arguments give one-line errors that name the field."""

import pytest
import torch

from tapa.attention import TapaPhase, tapa_attention, tapa_scores
from tapa.errors import ConfigError, ShapeError


def qkv(h=2, h_kv=2, lq=4, lk=4, d=8, dtype=torch.float32):
    return (
        torch.randn(1, h, lq, d, dtype=dtype),
        torch.randn(1, h_kv, lk, d, dtype=dtype),
        torch.randn(1, h_kv, lk, d, dtype=dtype),
    )


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"theta": 0.3}, r"theta: theta\*head_dim = 0.3\*8 = 2.4 is not a whole number in \[1, 7\]"),
        ({"theta": 0.0}, r"theta: .* not a whole number in \[1, 7\]"),
        ({"theta": 1.0}, r"theta: .* not a whole number in \[1, 7\]"),
        ({"theta": float("nan")}, r"theta: expected a number"),
        ({"alpha": 0.0}, r"alpha: must be a finite number > 0"),
        ({"alpha": -1.0}, r"alpha: must be a finite number > 0"),
        ({"alpha": float("inf")}, r"alpha: must be a finite number > 0"),
        ({"q_offset": -1}, r"q_offset: must be an integer >= 0"),
        ({"impl": "flash"}, r"impl: unknown attention implementation 'flash'"),
        ({"block_size": 0}, r"block_size: must be a positive integer"),
    ],
)
def test_bad_settings(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        tapa_attention(*qkv(), **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("tensors", "pattern"),
    [
        (qkv(h=3, h_kv=2), r"heads mismatch: k has 2 heads, which must divide q's 3"),
        ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 6), torch.randn(1, 2, 4, 6)), r"head_dim mismatch"),
        ((torch.randn(2, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)), r"batch mismatch"),
        ((torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)), r"q: expected 4 dims"),
        ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8)), r"v shape .* does not match k"),
        ((torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8).double(), torch.randn(1, 2, 4, 8)), r"dtype mismatch"),
        ((torch.ones(1, 2, 4, 8, dtype=torch.long),) * 3, r"q: expected a floating-point tensor"),
    ],
)
def test_bad_tensors(tensors, pattern):
    with pytest.raises(ShapeError, match=pattern) as info:
        tapa_attention(*tensors)
    assert "\n" not in str(info.value)


def test_bad_positions():
    q, k, _ = qkv()
    with pytest.raises(ShapeError, match=r"q_positions: expected shape \(4,\)"):
        tapa_scores(q, k, q_positions=torch.arange(5))


def test_bad_phase_name():
    with pytest.raises(ConfigError, match=r"tapa_phase: unknown phase 'cubic'"):
        TapaPhase(2, 8, phase="cubic")
