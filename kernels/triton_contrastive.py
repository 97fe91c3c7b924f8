"""Triton kernels of the tiled CLIP loss (imported only where triton exists; see contrastive.py).

Both kernels walk "rows" X [R, D] against "columns" Y [C, D] (contiguous, D % BLOCK_K == 0) with
logits z = s * X Y^T built tile by tile (never stored), in the log2 domain (z2 = z * log2 e).
The positive pair of row r is column r + off.

Dot precision: every tl.dot takes DOT_PRECISION (kernels/contrastive.py passes it): for fp32 features "tf32"
(tensor cores, 10-bit mantissa products, fp32 accumulation) or "ieee" (exact fp32); bf16/fp16 features always use
the native 16-bit tensor-core products with fp32 accumulation. Softmax, log-sum-exp and the positive logit are fp32.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _dot_tile(X, Y, rows, cols, R, C, D: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """X[rows] @ Y[cols]^T in fp32; rows/cols out of range read as zeros."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        x = tl.load(X + rows[:, None] * D + (k0 + offs_k)[None, :], mask=rows[:, None] < R, other=0.0)
        y = tl.load(Y + cols[:, None] * D + (k0 + offs_k)[None, :], mask=cols[:, None] < C, other=0.0)
        acc = tl.dot(x, tl.trans(y), acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def clip_lse_fwd(X, Y, SCALE, LSE, ROW_LOSS, R, C, off, D: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Per row r: LSE[r] = log2 sum_c exp2(z2[r, c]) and ROW_LOSS[r] = ln-domain lse - z[r, r+off]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    s2 = tl.load(SCALE).to(tl.float32) * LOG2E
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        z2 = _dot_tile(X, Y, rows, cols, R, C, D, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION) * s2
        z2 = tl.where(cols[None, :] < C, z2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(z2, 1))
        l_i = l_i * tl.math.exp2(m_i - m_new) + tl.sum(tl.math.exp2(z2 - m_new[:, None]), 1)
        m_i = m_new
    lse2 = m_i + tl.math.log2(l_i)
    # Positive logit in fp32 from the features themselves (O(BLOCK_M * D), no tile search).
    offs_k = tl.arange(0, BLOCK_K)
    pos = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, D, BLOCK_K):
        x = tl.load(X + rows[:, None] * D + (k0 + offs_k)[None, :], mask=rows[:, None] < R, other=0.0)
        y = tl.load(Y + (rows + off)[:, None] * D + (k0 + offs_k)[None, :], mask=rows[:, None] < R,
                    other=0.0)
        pos += tl.sum(x.to(tl.float32) * y.to(tl.float32), 1)
    tl.store(LSE + rows, lse2, mask=rows < R)
    tl.store(ROW_LOSS + rows, (lse2 - pos * s2) * LN2, mask=rows < R)


@triton.jit
def clip_grad_rows(X, Y, LSE_R, LSE_C, SCALE, GRAD, DX, ROWDOT, R, C, off, coef,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_DO: tl.constexpr, HAS_R: tl.constexpr,
                   HAS_C: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """dX[r, d-chunk] = s * sum_c G[r, c] Y[c, d-chunk] with
    G = grad * coef * (HAS_R * exp(z - lse_r[r]) + HAS_C * exp(z - lse_c[c])
                       - (HAS_R + HAS_C) * [c == r + off]),
    i.e. the logit gradient of the CE over rows (LSE_R) and/or over columns (LSE_C).
    ROWDOT[d-chunk, r] = sum_d X[r, d] * dX[r, d] / s (partial), which sums to d(loss)/d(s)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_do = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    s = tl.load(SCALE).to(tl.float32)
    g = tl.load(GRAD).to(tl.float32) * coef
    if HAS_R:
        lse_r = tl.load(LSE_R + rows, mask=rows < R, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_DO], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        z2 = _dot_tile(X, Y, rows, cols, R, C, D, BLOCK_M, BLOCK_N, BLOCK_K, DOT_PRECISION) * (s * LOG2E)
        p = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if HAS_R:
            p += tl.math.exp2(z2 - lse_r[:, None])
        if HAS_C:
            lse_c = tl.load(LSE_C + cols, mask=cols < C, other=0.0)
            p += tl.math.exp2(z2 - lse_c[None, :])
        p = tl.where(cols[None, :] == rows[:, None] + off, p - (HAS_R + HAS_C), p)
        p = tl.where(cols[None, :] < C, p, 0.0)
        y = tl.load(Y + cols[:, None] * D + offs_do[None, :],
                    mask=(cols[:, None] < C) & (offs_do[None, :] < D), other=0.0)
        acc = tl.dot(p.to(y.dtype), y, acc, input_precision=DOT_PRECISION)
    acc *= g
    x = tl.load(X + rows[:, None] * D + offs_do[None, :],
                mask=(rows[:, None] < R) & (offs_do[None, :] < D), other=0.0)
    tl.store(ROWDOT + tl.program_id(1) * R + rows, tl.sum(x.to(tl.float32) * acc, 1), mask=rows < R)
    tl.store(DX + rows[:, None] * D + offs_do[None, :], (acc * s).to(DX.dtype.element_ty),
             mask=(rows[:, None] < R) & (offs_do[None, :] < D))
