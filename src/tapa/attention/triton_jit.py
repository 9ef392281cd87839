"""The Triton JIT functions of TAPA attention (imported only when triton is used).

Triton resolves the helpers a kernel calls by their module-level names, hence this module;
:mod:`tapa.attention.triton_kernel` holds the launch code, the autograd wrapper and the math.

The three kernels (forward, dQ, dK/dV) repeat their argument lists (pointers, strides,
shapes, offsets): a Triton kernel takes flat scalars, so a shared signature cannot be
factored out; the per-tile math they share lives in the ``@triton.jit`` helpers below.
"""

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in float32; UPCAST computes half-precision products in float32
    (Triton's CPU interpreter multiplies bfloat16 bit patterns as integers)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _load_rows(base, b, h, s_b, s_h, s_l, offs, n_rows, cols, n_cols):
    """Rows ``offs`` (< n_rows) and columns ``cols`` (< n_cols) of head (b, h) of a (B, H, L, d)
    tensor with strides (s_b, s_h, s_l, 1); zeros outside."""
    ptrs = base + b * s_b + h * s_h + offs[:, None] * s_l + cols[None, :]
    return tl.load(ptrs, mask=(offs[:, None] < n_rows) & (cols[None, :] < n_cols), other=0.0)


@triton.jit
def _key_end(pid_m, q_offset, k_offset, lk, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):
    """Keys [0, end) can be visible to query block pid_m: causal tiles past it are skipped."""
    end = lk
    if CAUSAL:
        end = tl.minimum(lk, tl.maximum(q_offset + (pid_m + 1) * BLOCK_M - k_offset, 0))
    return end


@triton.jit
def _tile(
    qa,
    qp,
    qpl,
    ka,
    kp,
    offs_m,
    offs_n,
    q_offset,
    k_offset,
    lq,
    lk,
    alpha,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Scores of one tile and what the backward needs: (s, a, c, cp, valid).

    With SPLIT the float32 query phase part arrives as two half-precision parts, qp + qpl
    (high and low halves of its mantissa), and p = qp . kp + qpl . kp: the phase product
    of half-precision keys at close to float32 accuracy, on half-precision tensor cores."""
    amp = _dot(qa, tl.trans(ka), PRECISION, UPCAST)
    prod = _dot(qp, tl.trans(kp), PRECISION, UPCAST)
    if SPLIT:
        prod += _dot(qpl, tl.trans(kp), PRECISION, UPCAST)
    q_pos = q_offset + offs_m
    k_pos = k_offset + offs_n
    dist = tl.abs(q_pos[:, None] - k_pos[None, :]).to(tl.float32)
    c = 6.283185307179586 * tl.exp2(alpha * tl.log2(dist))  # 0 at distance 0 (alpha > 0)
    cp = c * prod
    s = amp * tl.cos(cp)
    valid = (offs_m[:, None] < lq) & (offs_n[None, :] < lk)
    if CAUSAL:
        valid = valid & (k_pos[None, :] <= q_pos[:, None])
    return s, amp, c, cp, valid


@triton.jit
def tapa_fwd(
    QA,
    KA,
    QP,
    QPL,
    KP,
    V,
    OUT,
    LSE,
    sqa_b,
    sqa_h,
    sqa_l,
    ska_b,
    ska_h,
    ska_l,
    sqp_b,
    sqp_h,
    sqp_l,
    skp_b,
    skp_h,
    skp_l,
    sv_b,
    sv_h,
    sv_l,
    so_b,
    so_h,
    so_l,
    heads,
    groups,
    lq,
    lk,
    da,
    dp,
    dv,
    q_offset,
    k_offset,
    alpha,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DA: tl.constexpr,
    DP: tl.constexpr,
    DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    hk = h // groups
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_a = tl.arange(0, DA)
    offs_p = tl.arange(0, DP)
    offs_v = tl.arange(0, DV)
    row_ok = offs_m < lq
    qa = _load_rows(QA, b, h, sqa_b, sqa_h, sqa_l, offs_m, lq, offs_a, da)
    qp = _load_rows(QP, b, h, sqp_b, sqp_h, sqp_l, offs_m, lq, offs_p, dp)
    qpl = qp
    if SPLIT:
        qpl = _load_rows(QPL, b, h, sqp_b, sqp_h, sqp_l, offs_m, lq, offs_p, dp)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, DV], tl.float32)
    end = _key_end(pid_m, q_offset, k_offset, lk, BLOCK_M, CAUSAL)
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ka = _load_rows(KA, b, hk, ska_b, ska_h, ska_l, offs_n, lk, offs_a, da)
        kp = _load_rows(KP, b, hk, skp_b, skp_h, skp_l, offs_n, lk, offs_p, dp)
        s, _a, _c, _cp, valid = _tile(
            qa, qp, qpl, ka, kp, offs_m, offs_n, q_offset, k_offset, lq, lk, alpha, CAUSAL, PRECISION, UPCAST, SPLIT
        )
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        corr = tl.exp(m_i - m_safe)
        l_i = l_i * corr + tl.sum(p, 1)
        v = _load_rows(V, b, hk, sv_b, sv_h, sv_l, offs_n, lk, offs_v, dv)
        acc = acc * corr[:, None] + _dot(p.to(v.dtype), v, PRECISION, UPCAST)
        m_i = m_new
    seen = l_i != 0.0  # NaN counts as seen: it propagates
    out = tl.where(seen[:, None], acc / tl.where(seen, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(
        OUT + b * so_b + h * so_h + offs_m[:, None] * so_l + offs_v[None, :],
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & (offs_v[None, :] < dv),
    )
    tl.store(LSE + bh * lq + offs_m, lse, mask=row_ok)


@triton.jit
def _bwd_row_terms(s, amp, c, cp, valid, lse, delta, dps):
    """P, da, dp of a tile (zeros where masked or for rows that saw no key)."""
    lse_safe = tl.where(lse == float("-inf"), float("inf"), lse)
    p = tl.where(valid, tl.exp(s - lse_safe[:, None]), 0.0)
    ds = p * (dps - delta[:, None])
    d_amp = ds * tl.cos(cp)
    d_prod = -ds * amp * c * tl.sin(cp)
    return p, d_amp, d_prod


@triton.jit
def tapa_bwd_kv(
    QA,
    KA,
    QP,
    QPL,
    KP,
    V,
    DO,
    LSE,
    DELTA,
    DKA,
    DKP,
    DV_,
    sqa_b,
    sqa_h,
    sqa_l,
    ska_b,
    ska_h,
    ska_l,
    sqp_b,
    sqp_h,
    sqp_l,
    skp_b,
    skp_h,
    skp_l,
    sv_b,
    sv_h,
    sv_l,
    sdo_b,
    sdo_h,
    sdo_l,
    heads,
    kv_heads,
    groups,
    lq,
    lk,
    da,
    dp,
    dv,
    q_offset,
    k_offset,
    alpha,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DA: tl.constexpr,
    DP: tl.constexpr,
    DV: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // kv_heads
    hk = bhk % kv_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_a = tl.arange(0, DA)
    offs_p = tl.arange(0, DP)
    offs_v = tl.arange(0, DV)
    col_ok = offs_n < lk
    mask_ka = col_ok[:, None] & (offs_a[None, :] < da)
    mask_kp = col_ok[:, None] & (offs_p[None, :] < dp)
    mask_v = col_ok[:, None] & (offs_v[None, :] < dv)
    v = _load_rows(V, b, hk, sv_b, sv_h, sv_l, offs_n, lk, offs_v, dv)
    ka = _load_rows(KA, b, hk, ska_b, ska_h, ska_l, offs_n, lk, offs_a, da)
    kp = _load_rows(KP, b, hk, skp_b, skp_h, skp_l, offs_n, lk, offs_p, dp)
    dka = tl.zeros([BLOCK_N, DA], tl.float32)
    dkp = tl.zeros([BLOCK_N, DP], tl.float32)
    dvv = tl.zeros([BLOCK_N, DV], tl.float32)
    start = 0
    if CAUSAL:  # queries before the first key of the block see none of it
        start = tl.maximum(k_offset + pid_n * BLOCK_N - q_offset, 0) // BLOCK_M * BLOCK_M
    for g in range(0, groups):
        h = hk * groups + g
        for start_m in range(start, lq, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < lq
            qa = _load_rows(QA, b, h, sqa_b, sqa_h, sqa_l, offs_m, lq, offs_a, da)
            qp = _load_rows(QP, b, h, sqp_b, sqp_h, sqp_l, offs_m, lq, offs_p, dp)
            qpl = qp
            if SPLIT:
                qpl = _load_rows(QPL, b, h, sqp_b, sqp_h, sqp_l, offs_m, lq, offs_p, dp)
            do = _load_rows(DO, b, h, sdo_b, sdo_h, sdo_l, offs_m, lq, offs_v, dv)
            row = (b * heads + h) * lq + offs_m
            lse = tl.load(LSE + row, mask=row_ok, other=float("-inf"))
            delta = tl.load(DELTA + row, mask=row_ok, other=0.0)
            s, amp, c, cp, valid = _tile(
                qa, qp, qpl, ka, kp, offs_m, offs_n, q_offset, k_offset, lq, lk, alpha, CAUSAL, PRECISION, UPCAST, SPLIT
            )
            dps = _dot(do, tl.trans(v), PRECISION, UPCAST)
            p, d_amp, d_prod = _bwd_row_terms(s, amp, c, cp, valid, lse, delta, dps)
            dvv += _dot(tl.trans(p).to(do.dtype), do, PRECISION, UPCAST)
            dka += _dot(tl.trans(d_amp).to(qa.dtype), qa, PRECISION, UPCAST)
            dkp += _dot(tl.trans(d_prod).to(qp.dtype), qp, PRECISION, UPCAST)
    base = (b * kv_heads + hk) * lk + offs_n[:, None]
    tl.store(DKA + base * da + offs_a[None, :], dka.to(DKA.dtype.element_ty), mask=mask_ka)
    tl.store(DKP + base * dp + offs_p[None, :], dkp.to(DKP.dtype.element_ty), mask=mask_kp)
    tl.store(DV_ + base * dv + offs_v[None, :], dvv.to(DV_.dtype.element_ty), mask=mask_v)


@triton.jit
def tapa_bwd_q(
    QA,
    KA,
    QP,
    QPL,
    KP,
    V,
    DO,
    LSE,
    DELTA,
    DQA,
    DQP,
    sqa_b,
    sqa_h,
    sqa_l,
    ska_b,
    ska_h,
    ska_l,
    sqp_b,
    sqp_h,
    sqp_l,
    skp_b,
    skp_h,
    skp_l,
    sv_b,
    sv_h,
    sv_l,
    sdo_b,
    sdo_h,
    sdo_l,
    heads,
    groups,
    lq,
    lk,
    da,
    dp,
    dv,
    q_offset,
    k_offset,
    alpha,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DA: tl.constexpr,
    DP: tl.constexpr,
    DV: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    hk = h // groups
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_a = tl.arange(0, DA)
    offs_p = tl.arange(0, DP)
    offs_v = tl.arange(0, DV)
    row_ok = offs_m < lq
    qa = _load_rows(QA, b, h, sqa_b, sqa_h, sqa_l, offs_m, lq, offs_a, da)
    qp = _load_rows(QP, b, h, sqp_b, sqp_h, sqp_l, offs_m, lq, offs_p, dp)
    qpl = qp
    if SPLIT:
        qpl = _load_rows(QPL, b, h, sqp_b, sqp_h, sqp_l, offs_m, lq, offs_p, dp)
    do = _load_rows(DO, b, h, sdo_b, sdo_h, sdo_l, offs_m, lq, offs_v, dv)
    row = bh * lq + offs_m
    lse = tl.load(LSE + row, mask=row_ok, other=float("-inf"))
    delta = tl.load(DELTA + row, mask=row_ok, other=0.0)
    dqa = tl.zeros([BLOCK_M, DA], tl.float32)
    dqp = tl.zeros([BLOCK_M, DP], tl.float32)
    end = _key_end(pid_m, q_offset, k_offset, lk, BLOCK_M, CAUSAL)
    for start_n in range(0, end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ka = _load_rows(KA, b, hk, ska_b, ska_h, ska_l, offs_n, lk, offs_a, da)
        kp = _load_rows(KP, b, hk, skp_b, skp_h, skp_l, offs_n, lk, offs_p, dp)
        s, amp, c, cp, valid = _tile(
            qa, qp, qpl, ka, kp, offs_m, offs_n, q_offset, k_offset, lq, lk, alpha, CAUSAL, PRECISION, UPCAST, SPLIT
        )
        v = _load_rows(V, b, hk, sv_b, sv_h, sv_l, offs_n, lk, offs_v, dv)
        dps = _dot(do, tl.trans(v), PRECISION, UPCAST)
        _p, d_amp, d_prod = _bwd_row_terms(s, amp, c, cp, valid, lse, delta, dps)
        dqa += _dot(d_amp.to(ka.dtype), ka, PRECISION, UPCAST)
        dqp += _dot(d_prod.to(kp.dtype), kp, PRECISION, UPCAST)
    tl.store(
        DQA + row[:, None] * da + offs_a[None, :],
        dqa.to(DQA.dtype.element_ty),
        mask=row_ok[:, None] & (offs_a[None, :] < da),
    )
    tl.store(
        DQP + row[:, None] * dp + offs_p[None, :],
        dqp.to(DQP.dtype.element_ty),
        mask=row_ok[:, None] & (offs_p[None, :] < dp),
    )
