import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, the denominator floored at 0.1.

    The floor matters only where the reference is (near) zero, e.g. dq of a query that sees
    a single key: float32 cancellation noise is then held to 1e-5 absolute for a 1e-4 bound.
    """
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(0.1)).item()


def induction_logits(ids, vocab_size: int):
    """A rigged recall model: at every position, all mass on the token that followed the
    current token's most recent earlier occurrence (a perfect induction head)."""
    import torch

    b, n = ids.shape
    logits = torch.full((b, n, vocab_size), -1e9)
    for i in range(b):
        for t in range(1, n):
            earlier = (ids[i, :t] == ids[i, t]).nonzero().flatten()
            if len(earlier):
                logits[i, t, ids[i, earlier[-1] + 1]] = 0.0
    return logits


def pytest_sessionstart(session):
    """Build (or load) the fused CPU kernel once before any test: child processes then find it
    in the cache, and no test's captured output holds the one-time build message."""
    from tapa.attention.fused_cpu import fused_cpu_available

    fused_cpu_available()
