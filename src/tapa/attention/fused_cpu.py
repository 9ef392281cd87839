"""Fused CPU TAPA: a C++/OpenMP kernel built on first use and cached.

The kernel (``csrc/tapa_fused_cpu.cpp``) computes the same function as the chunked kernel:

    s = (qa . ka) * cos(2 pi |m - n|^alpha (qp . kp)),   out = softmax(s) v

with the online softmax of flash attention, and the backward by recomputation from the row
log-sum-exp (formulas in :mod:`tapa.attention.chunked`). What it changes is where the work
happens: per tile, two BLAS products fill the amplitude and phase tiles, then one
vectorised pass (AVX-512 or AVX2 polynomial cos/sin/exp) turns them into probabilities while they
are still in cache; the distance factor comes from a 1-D table indexed by the signed
distance. For one or a few query rows (decoding) one task holds the rows of all the query
heads that share a key head, so the cache is read once per key head, and the keys are
split across threads with the partial softmaxes combined by their log-sum-exp
(flash-decoding). Details and measurements:
docs/kernels.md, docs/benchmarks.md.

Building needs a C++ compiler and ``ninja`` (a dependency of tapa); the build takes about
half a minute once per machine and torch version and is cached under
``$TAPA_CACHE/kernels`` (default ``~/.cache/tapa/kernels``). Where it cannot be built,
:func:`fused_cpu_available` is False, one line says why, and ``impl="auto"`` falls back to
the plain-PyTorch chunked kernel. ``TAPA_DISABLE_FUSED=1`` turns it off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from tapa.attention.phase import Parts, compute_dtype, unit_last_stride
from tapa.errors import ConfigError
from tapa.utils.files import cache_root

SOURCE = Path(__file__).with_name("csrc") / "tapa_fused_cpu.cpp"
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 256

_state: dict[str, object] = {}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


# vector builds, widest first: the CPU flags each needs and the compiler flags it adds
_ISA_FLAGS: dict[str, tuple[set[str], list[str]]] = {
    "avx512": ({"avx512f", "avx2", "fma"}, ["-mavx512f", "-mavx2", "-mfma", "-DTAPA_AVX512"]),
    "avx2": ({"avx2", "fma"}, ["-mavx2", "-mfma", "-DTAPA_AVX2"]),
    "none": (set(), []),  # the C library's cos/sin/exp
}
ISAS = tuple(_ISA_FLAGS)


def available_isas() -> list[str]:
    """The vector builds this CPU can run, widest first (always ending with ``none``)."""
    flags = _cpu_flags() if platform.machine() in ("x86_64", "AMD64") else set()
    return [isa for isa, (need, _) in _ISA_FLAGS.items() if need <= flags]


def vector_isa() -> str:
    """The vector instructions the kernel is built for: the widest this CPU has, or the
    narrower one named by ``TAPA_FUSED_ISA`` (``avx512``, ``avx2`` or ``none``: C library
    cos/sin/exp), e.g. to test the AVX2 build on an AVX-512 machine."""
    have = available_isas()
    asked = os.environ.get("TAPA_FUSED_ISA", "").strip().lower()
    if not asked or asked == "auto":
        return have[0]
    if asked not in ISAS:
        raise ConfigError(f"TAPA_FUSED_ISA: expected one of auto, {', '.join(ISAS)}, got {asked!r}")
    if asked not in have:
        raise ConfigError(f"TAPA_FUSED_ISA: this CPU lacks {asked}; use one of {', '.join(have)}")
    return asked


def _build_flags() -> list[str]:
    return ["-O3", "-fopenmp", "-std=c++17", *_ISA_FLAGS[vector_isa()][1]]


def _build_dir(flags: list[str]) -> Path:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), sys.version.encode(), " ".join(flags).encode()):
        key.update(part)
    return cache_root() / "kernels" / f"fused_cpu-{key.hexdigest()[:16]}"


def _load() -> None:
    if os.environ.get("TAPA_DISABLE_FUSED") == "1":
        raise RuntimeError("disabled by TAPA_DISABLE_FUSED=1")
    from torch.utils import cpp_extension

    flags = _build_flags()
    lib = _build_dir(flags) / "tapa_fused_cpu.so"
    if lib.exists():
        torch.ops.load_library(str(lib))
        _register_fakes()
        return
    # build in a private folder, then move the library into the cache atomically: a build
    # killed half-way leaves no lock or partial library behind, and concurrent builds do
    # not wait on each other
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=lib.parent, prefix=".build-"))
    # one line on stderr, so a first call does not look hung (stdout stays the command's own)
    print(
        f"tapa: building the fused CPU attention kernel (once per machine and torch version, ~25 s) into {lib.parent}",
        file=sys.stderr,
        flush=True,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpp_extension.load(
                name="tapa_fused_cpu",
                sources=[str(SOURCE)],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                build_directory=str(tmp),
                is_python_module=False,
                verbose=False,
            )
        os.replace(tmp / "tapa_fused_cpu.so", lib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _register_fakes()


def _register_fakes() -> None:
    """Shape-only ("fake") versions of the two ops, so torch.compile can trace a model that
    calls them: the compiled graph keeps each op as one opaque call into the kernel."""
    if "fakes" in _state:
        return

    @torch.library.register_fake("tapa_fused_cpu::forward")
    def _forward(qa, ka, qp, kp, v, alpha, causal, q_offset, k_offset, block_q, block_k, splits):
        b, h, lq, _ = qa.shape
        return qa.new_empty((b, h, lq, v.shape[-1])), qa.new_empty((b, h, lq))

    @torch.library.register_fake("tapa_fused_cpu::backward")
    def _backward(qa, ka, qp, kp, v, d_out, lse, delta, alpha, causal, q_offset, k_offset, block_q, block_k):
        return [t.new_empty(t.shape) for t in (qa, ka, qp, kp, v)]

    _state["fakes"] = True


def fused_cpu_available() -> bool:
    """Whether the fused CPU kernel is built and loaded (builds it on the first call)."""
    if "ok" not in _state:
        try:
            _load()
            _state["ok"] = True
        except Exception as err:  # no compiler, no ninja, a link error: fall back, say so once
            _state["ok"] = False
            reason = str(err).strip().splitlines()
            _state["reason"] = reason[-1] if reason else type(err).__name__
            if os.environ.get("TAPA_DISABLE_FUSED") != "1":
                print(
                    f"tapa: fused CPU attention unavailable ({_state['reason'][:200]}); using the chunked kernel",
                    file=sys.stderr,
                )
    return bool(_state["ok"])


def unavailable_reason() -> str | None:
    fused_cpu_available()
    return None if _state["ok"] else str(_state["reason"])


def _kernel_inputs(*ts: torch.Tensor) -> list[torch.Tensor]:
    """The parts and v in the compute dtype, rows with unit stride (views are not copied)."""
    dtype = compute_dtype(ts[0].dtype)
    return [unit_last_stride(t.to(dtype)) for t in ts]


class _FusedTapa(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qa, ka, qp, kp, v, alpha, causal, q_offset, k_offset, block_q, block_k, splits):
        inputs = _kernel_inputs(qa, ka, qp, kp, v)
        out, lse = torch.ops.tapa_fused_cpu.forward(
            *inputs, alpha, causal, q_offset, k_offset, block_q, block_k, splits
        )
        ctx.save_for_backward(*inputs, out, lse)
        ctx.args = (alpha, causal, q_offset, k_offset, block_q, block_k)  # the backward needs no splits
        ctx.v_dtype = v.dtype
        return out.to(v.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out):
        qa, ka, qp, kp, v, out, lse = ctx.saved_tensors
        d_out = d_out.to(out.dtype).contiguous()
        delta = (d_out * out).sum(-1)
        dqa, dka, dqp, dkp, dv = torch.ops.tapa_fused_cpu.backward(qa, ka, qp, kp, v, d_out, lse, delta, *ctx.args)
        return dqa, dka, dqp, dkp, dv.to(ctx.v_dtype), None, None, None, None, None, None, None


def fused_cpu_attention(
    parts: Parts,
    v: torch.Tensor,
    *,
    alpha: float,
    causal: bool,
    q_offset: int = 0,
    k_offset: int = 0,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
    splits: int = 0,
) -> torch.Tensor:
    """TAPA attention by the fused CPU kernel; float32 (float64 for float64 parts) output (B, H, Lq, Dv).

    ``splits``: how many parts the keys of each query block are split into, their partial
    softmaxes combined by log-sum-exp (flash-decoding); 0 chooses: more than 1 only when
    there are fewer tasks than threads. A task is a (batch, head, query block), or when
    decoding (at most 4 queries) a (batch, key head) with all its query heads.

    Raises ConfigError when the kernel cannot be built here (see :func:`fused_cpu_available`).
    """
    if not fused_cpu_available():
        raise ConfigError(
            f"impl: the fused CPU kernel could not be built on this machine ({_state['reason'][:120]}); use impl='auto'"
        )
    args = (float(alpha), bool(causal), int(q_offset), int(k_offset), int(block_q), int(block_k), int(splits))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*parts, v)):
        return _FusedTapa.apply(*parts, v, *args)
    # inference (decoding): the op directly, without the autograd wrapper's overhead
    out, _ = torch.ops.tapa_fused_cpu.forward(*_inference_inputs(parts, v), *args)
    return out.to(v.dtype)


def _inference_inputs(parts: Parts, v: torch.Tensor) -> list[torch.Tensor]:
    """As :func:`_kernel_inputs`, except that bfloat16 key parts and values go with float32
    query parts as they are: the kernel reads a bfloat16 cache in place when decoding (and
    widens it itself otherwise), instead of a float32 copy made at every step."""
    qa, qp = _kernel_inputs(parts.qa, parts.qp)
    keys = (parts.ka, parts.kp, v)
    if qa.dtype == torch.float32 and all(t.dtype == torch.bfloat16 for t in keys):
        ka, kp, v = (unit_last_stride(t) for t in keys)
    else:
        ka, kp, v = (unit_last_stride(t.to(qa.dtype)) for t in keys)
    return [qa, ka, qp, kp, v]
