"""Triton kernels of flash attention (imported only where triton exists; see attention.py).

Layout: contiguous [B*H, N, HEAD_DIM]; row stride HEAD_DIM. Head dims below BLOCK_D (80 -> 128)
are masked along d (EVEN_D=False). Scores live in the log2 domain: qk_scale = scale * log2(e) and
LSE stores m + log2(l), so softmax is exp2(qk * qk_scale - LSE). Key tiles are visited in two
ranges: tiles that need no mask (full, valid, below the causal diagonal) and the few that do
(diagonal, key-length and N tails); fully masked causal tiles are never visited.
"""
import triton
import triton.language as tl


@triton.jit
def _load_rows(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, MASK: tl.constexpr,
               EVEN_D: tl.constexpr):
    """Load a [rows, BLOCK_D] tile, zero outside rows < n_rows (if MASK) and d < HEAD_DIM."""
    if MASK:
        if EVEN_D:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        if EVEN_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _load_vec(ptrs, rows, n_rows, MASK: tl.constexpr):
    if MASK:
        x = tl.load(ptrs, mask=rows < n_rows, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _kv_len(LENS, bh, H, N, HAS_LENS: tl.constexpr):
    if HAS_LENS:
        n = tl.minimum(tl.load(LENS + bh // H), N)
    else:
        n = N
    return n


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, K, V, rows, offs_n, offs_d, lo, hi, kv_len, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
               MASK: tl.constexpr, EVEN_D: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + cols[:, None] * HEAD_DIM + offs_d[None, :], cols, kv_len, offs_d,
                       HEAD_DIM, MASK, EVEN_D)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        if MASK:
            valid = cols[None, :] < kv_len
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V + cols[:, None] * HEAD_DIM + offs_d[None, :], cols, kv_len, offs_d,
                       HEAD_DIM, MASK, EVEN_D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _key_ranges(m0, kv_len, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """For the query tile at m0: keys [0, full) need no mask, keys [full, hi) do."""
    hi = kv_len
    full = kv_len // BLOCK_N * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(hi, m0 + BLOCK_M)
        full = tl.minimum(full, (m0 + 1) // BLOCK_N * BLOCK_N)
    return full, hi


@triton.jit
def attn_fwd(Q, K, V, O, LSE, LENS, qk_scale, N, H,
             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr,
             EVEN_D: tl.constexpr):
    bh = tl.program_id(0)
    m0 = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M  # longest causal tiles first
    base = bh.to(tl.int64) * N * HEAD_DIM
    Q += base
    K += base
    V += base
    O += base
    kv_len = _kv_len(LENS, bh, H, N, HAS_LENS)
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_rows(Q + rows[:, None] * HEAD_DIM + offs_d[None, :], rows, N, offs_d, HEAD_DIM,
                   True, EVEN_D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    full, hi = _key_ranges(m0, kv_len, BLOCK_M, BLOCK_N, CAUSAL)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, rows, offs_n, offs_d, 0, full, kv_len,
                               qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, False, EVEN_D)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, K, V, rows, offs_n, offs_d, full, hi, kv_len,
                               qk_scale, HEAD_DIM, BLOCK_N, CAUSAL, True, EVEN_D)
    out = acc / l_i[:, None]
    mask = (rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    tl.store(O + rows[:, None] * HEAD_DIM + offs_d[None, :], out.to(O.dtype.element_ty), mask=mask)
    tl.store(LSE + bh * N + rows, m_i + tl.math.log2(l_i), mask=rows < N)


@triton.jit
def attn_bwd_delta(O, DO, DELTA, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    """DELTA = rowsum(dO * O), fp32."""
    bh = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs = bh.to(tl.int64) * N * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :]
    mask = (rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + offs, mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * N + rows, tl.sum(o * do, 1), mask=rows < N)


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, cols, offs_m, offs_d, lo, hi, N, kv_len,
                qk_scale, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr,
                MASK: tl.constexpr, EVEN_D: tl.constexpr):
    """Accumulate dK, dV of one key tile over the query tiles in [lo, hi) (transposed tiles)."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m
        q = _load_rows(Q + rows[:, None] * HEAD_DIM + offs_d[None, :], rows, N, offs_d, HEAD_DIM,
                       MASK, EVEN_D)
        lse = _load_vec(LSE + rows, rows, N, MASK)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
        if MASK:
            valid = (rows[None, :] < N) & (cols[:, None] < kv_len)
            if CAUSAL:
                valid = valid & (rows[None, :] >= cols[:, None])
            p_t = tl.where(valid, p_t, 0.0)
        do = _load_rows(DO + rows[:, None] * HEAD_DIM + offs_d[None, :], rows, N, offs_d,
                        HEAD_DIM, MASK, EVEN_D)
        dv += tl.dot(p_t.to(do.dtype), do)
        dp_t = tl.dot(v, tl.trans(do))
        delta = _load_vec(DELTA + rows, rows, N, MASK)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)
    return dk, dv


@triton.jit
def attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, LENS, qk_scale, scale, N, H,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr,
                  EVEN_D: tl.constexpr):
    """One program per (head, key tile of BLOCK_N); iterates query tiles of BLOCK_M."""
    bh = tl.program_id(0)
    n0 = tl.program_id(1) * BLOCK_N
    base = bh.to(tl.int64) * N * HEAD_DIM
    Q += base
    K += base
    V += base
    DO += base
    DK += base
    DV += base
    LSE += bh * N
    DELTA += bh * N
    kv_len = _kv_len(LENS, bh, H, N, HAS_LENS)
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_offs = cols[:, None] * HEAD_DIM + offs_d[None, :]
    k = _load_rows(K + kv_offs, cols, kv_len, offs_d, HEAD_DIM, True, EVEN_D)
    v = _load_rows(V + kv_offs, cols, kv_len, offs_d, HEAD_DIM, True, EVEN_D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # Query tiles: [lo, mid) masked (causal diagonal), [mid, full) unmasked, [max(mid, full), hi)
    # masked (N tail). A key tile crossing kv_len is masked throughout; one past it does nothing.
    lo = 0
    mid = 0
    if CAUSAL:
        lo = n0 // BLOCK_M * BLOCK_M
        mid = (n0 + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    full = N // BLOCK_M * BLOCK_M
    mid = tl.where(n0 + BLOCK_N > kv_len, N, mid)
    hi = tl.where(n0 < kv_len, N, lo)
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, cols, offs_m, offs_d, lo,
                         tl.minimum(mid, hi), N, kv_len, qk_scale, HEAD_DIM, BLOCK_M, CAUSAL,
                         True, EVEN_D)
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, cols, offs_m, offs_d, mid, full, N,
                         kv_len, qk_scale, HEAD_DIM, BLOCK_M, CAUSAL, False, EVEN_D)
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, cols, offs_m, offs_d,
                         tl.maximum(mid, full), hi, N, kv_len, qk_scale, HEAD_DIM, BLOCK_M,
                         CAUSAL, True, EVEN_D)
    mask = (cols[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    tl.store(DK + kv_offs, (dk * scale).to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + kv_offs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, K, V, rows, offs_n, offs_d, lo, hi, kv_len, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              MASK: tl.constexpr, EVEN_D: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = _load_rows(K + cols[:, None] * HEAD_DIM + offs_d[None, :], cols, kv_len, offs_d,
                       HEAD_DIM, MASK, EVEN_D)
        p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
        if MASK:
            valid = cols[None, :] < kv_len
            if CAUSAL:
                valid = valid & (cols[None, :] <= rows[:, None])
            p = tl.where(valid, p, 0.0)
        v = _load_rows(V + cols[:, None] * HEAD_DIM + offs_d[None, :], cols, kv_len, offs_d,
                       HEAD_DIM, MASK, EVEN_D)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, LENS, qk_scale, scale, N, H,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_LENS: tl.constexpr,
                EVEN_D: tl.constexpr):
    """One program per (head, query tile of BLOCK_M); iterates key tiles of BLOCK_N."""
    bh = tl.program_id(0)
    m0 = (tl.num_programs(1) - 1 - tl.program_id(1)) * BLOCK_M
    base = bh.to(tl.int64) * N * HEAD_DIM
    Q += base
    K += base
    V += base
    DO += base
    DQ += base
    kv_len = _kv_len(LENS, bh, H, N, HAS_LENS)
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_offs = rows[:, None] * HEAD_DIM + offs_d[None, :]
    q = _load_rows(Q + q_offs, rows, N, offs_d, HEAD_DIM, True, EVEN_D)
    do = _load_rows(DO + q_offs, rows, N, offs_d, HEAD_DIM, True, EVEN_D)
    lse = _load_vec(LSE + bh * N + rows, rows, N, True)
    delta = _load_vec(DELTA + bh * N + rows, rows, N, True)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    full, hi = _key_ranges(m0, kv_len, BLOCK_M, BLOCK_N, CAUSAL)
    dq = _dq_inner(dq, q, do, lse, delta, K, V, rows, offs_n, offs_d, 0, full, kv_len, qk_scale,
                   HEAD_DIM, BLOCK_N, CAUSAL, False, EVEN_D)
    dq = _dq_inner(dq, q, do, lse, delta, K, V, rows, offs_n, offs_d, full, hi, kv_len, qk_scale,
                   HEAD_DIM, BLOCK_N, CAUSAL, True, EVEN_D)
    mask = (rows[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    tl.store(DQ + q_offs, (dq * scale).to(DQ.dtype.element_ty), mask=mask)
