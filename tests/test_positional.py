"""RoPE layouts, relative-position property, ALiBi slopes and bias, and RoPE config errors."""

import math

import pytest
import torch

from tapa.errors import ConfigError
from tapa.positional import RotaryEmbedding, alibi_bias, alibi_slopes, rope_inv_freq


def test_interleaved_equals_half_split_up_to_a_permutation():
    d = 16
    # half-split pairs coordinate i with i + D/2; interleaved pairs 2i with 2i + 1
    perm = torch.tensor([j for i in range(d // 2) for j in (i, i + d // 2)])  # half -> interleaved order
    x = torch.randn(3, 10, d)
    pos = torch.arange(10)
    half, inter = RotaryEmbedding(d, 100.0), RotaryEmbedding(d, 100.0, interleaved=True)
    got_half = half.rotate(x, *half(pos))
    got_inter = inter.rotate(x[..., perm], *inter(pos))
    torch.testing.assert_close(got_inter, got_half[..., perm])


def test_interleaved_matches_spec_pair_formula():
    # docs/paper.md section 1: pair d = (x_{2d}, x_{2d+1}) rotated by m * base^(-2d/D)
    d, base, m = 8, 10000.0, 7
    x = torch.randn(d)
    rope = RotaryEmbedding(d, base, interleaved=True)
    got = rope.rotate(x.view(1, d), *rope(torch.tensor([m])))[0]
    want = torch.empty(d)
    for i in range(d // 2):
        ang = m * base ** (-2 * i / d)
        want[2 * i] = x[2 * i] * math.cos(ang) - x[2 * i + 1] * math.sin(ang)
        want[2 * i + 1] = x[2 * i] * math.sin(ang) + x[2 * i + 1] * math.cos(ang)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_scores_depend_only_on_relative_position(interleaved):
    rope = RotaryEmbedding(16, 10000.0, interleaved=interleaved)
    q, k = torch.randn(16), torch.randn(16)

    def score(m, n):
        rq = rope.rotate(q.view(1, 16), *rope(torch.tensor([m])))
        rk = rope.rotate(k.view(1, 16), *rope(torch.tensor([n])))
        return (rq * rk).sum()

    torch.testing.assert_close(score(10, 3), score(110, 103), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(score(10, 3), score(10, 4), atol=1e-3)


def test_alibi_slopes_power_of_two_and_not():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 6 heads: 4-head slopes (2^-2, 2^-4, 2^-6, 2^-8) then 2^-1, 2^-3 from the 8-head series
    want6 = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(want6))


def test_alibi_bias_is_linear_in_distance():
    bias = alibi_bias(torch.tensor([0.5, 0.25]), torch.arange(5, 8), torch.arange(0, 8))
    assert bias.shape == (2, 3, 8)
    assert bias[0, 0, 5] == 0 and bias[0, 0, 0] == -2.5 and bias[1, 2, 3] == -1.0


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        (("cubic", 16, 1e4), {}, r"rope_type: unknown 'cubic'; choose one of"),
        (("linear", 16, 1e4), {}, r"rope_scaling: 'linear' needs factor"),
        (("linear", 16, 1e4), {"factor": 2.0, "beta": 1}, r"'linear' does not take beta; it takes factor"),
        (("linear", 16, 1e4), {"factor": -2.0}, r"factor: must be a number > 0"),
        (("yarn", 16, 1e4), {"factor": 8.0}, r"'yarn' needs original_max_position_embeddings"),
        (("default", 15, 1e4), {}, r"head_dim: RoPE needs an even head_dim"),
        (("default", 16, 1.0), {}, r"rope_theta: the RoPE base must be a number > 1"),
        (
            ("longrope", 4, 1e4),
            {"short_factor": [1.0], "long_factor": [1.0, 1.0], "original_max_position_embeddings": 64, "factor": 2.0},
            r"short_factor: needs head_dim/2 = 2 values, got 1",
        ),
    ],
)
def test_rope_config_errors(args, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        rope_inv_freq(*args, **kwargs)
    assert "\n" not in str(info.value)
