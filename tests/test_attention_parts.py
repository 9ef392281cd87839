"""quadratic_parts: the split of q and k into TAPA's four parts, and its gradients."""

import pytest
import torch

from tapa.attention import quadratic_parts


def sliced_parts(q, k, d_a):
    """The parts written with plain slicing: the independent reference."""
    d_p = q.shape[-1] - d_a
    return q[..., :d_a] * d_a**-0.5, k[..., :d_a], q[..., d_a:] * d_p**-0.5, k[..., d_a:]


@pytest.mark.parametrize(("d", "theta", "d_a"), [(8, 0.5, 4), (12, 0.25, 3), (6, 0.5, 3)])
def test_parts_values_and_gradients_equal_plain_slicing(d, theta, d_a):
    torch.manual_seed(d)
    q = torch.randn(2, 3, 5, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 3, 7, d, dtype=torch.float64, requires_grad=True)
    shapes = ((5, d_a), (7, d_a), (5, d - d_a), (7, d - d_a))
    weights = [torch.randn(2, 3, n, w, dtype=torch.float64) for n, w in shapes]
    got = quadratic_parts(q, k, theta)
    want = sliced_parts(q, k, d_a)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    grads = torch.autograd.grad(sum((p * w).sum() for p, w in zip(got, weights, strict=True)), (q, k))
    ref = torch.autograd.grad(sum((p * w).sum() for p, w in zip(want, weights, strict=True)), (q, k))
    for a, b in zip(grads, ref, strict=True):
        assert torch.equal(a, b)


def test_gradient_of_an_unused_part_is_zero():
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    k = torch.randn(1, 2, 4, 8, requires_grad=True)
    parts = quadratic_parts(q, k, 0.5)
    (parts.qa.sum() + parts.kp.sum()).backward()
    assert torch.equal(q.grad[..., :4], torch.full((1, 2, 4, 4), 0.5))  # 1/sqrt(D_A), D_A = 4
    assert torch.equal(q.grad[..., 4:], torch.zeros(1, 2, 4, 4))
    assert torch.equal(k.grad[..., :4], torch.zeros(1, 2, 4, 4))
    assert torch.equal(k.grad[..., 4:], torch.ones(1, 2, 4, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad", [True, False])
def test_key_parts_are_views_of_the_keys(grad, dtype):
    """A KV cache is read in place: the key parts share the keys' storage and dtype (a bfloat16
    cache is not copied to float32), with or without autograd; query parts are float32."""
    q = torch.randn(1, 2, 3, 8, dtype=dtype, requires_grad=grad)
    k = torch.randn(1, 2, 9, 8, dtype=dtype, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        parts = quadratic_parts(q, k, 0.5)
    assert parts.qa.dtype == parts.qp.dtype == torch.float32
    assert parts.ka.dtype == parts.kp.dtype == dtype
    assert parts.ka.data_ptr() == k.data_ptr()
    assert parts.kp.data_ptr() == k.data_ptr() + 4 * k.element_size()
    assert parts.qa.data_ptr() != q.data_ptr()  # the query parts carry the scales: new tensors
