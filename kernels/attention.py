"""Flash attention for GrowCLIP: Triton forward (saves the log-sum-exp) and a two-kernel backward
(dK/dV per key tile, dQ per query tile, after delta = rowsum(dO * O)), registered as the custom
ops growclip::flash_attention / growclip::flash_attention_backward so torch.compile keeps them
whole. Without triton, or on CPU tensors without TRITON_INTERPRET=1, flash_attention falls back
to kernels.reference.attention_reference.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._common import LOG2E, new_empty, next_pow2, triton_available, use_triton
from .reference import attention_reference

if triton_available():
    import triton

    from . import triton_attention as _k


class Tiles(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Fixed tiles (no autotuning, so every rank runs the same kernel), keyed by the smallest N bucket
# >= N, then BLOCK_D, for 16-bit inputs. The bucket's tiles keep the masked tail short for the
# named N: e.g. N=77 -> 2 query x 3 key tiles of 64 x 32 (96 keys, not 128); N=197 -> 2 x 7 of
# 128 x 32 (224 keys); N=257 -> 5 x 9 of 64 x 32 (288). The backward reuses the pair: dQ owns
# BLOCK_M queries and walks BLOCK_N keys, dK/dV owns BLOCK_M keys and walks BLOCK_N queries.
# Starting points for H100/H200, to be retuned with `python -m kernels.bench`.
_TILES = {
    64: {32: Tiles(64, 64, 4, 2), 64: Tiles(64, 64, 4, 2), 128: Tiles(64, 64, 4, 2)},  # 50
    96: {32: Tiles(64, 32, 4, 3), 64: Tiles(64, 32, 4, 3), 128: Tiles(64, 32, 4, 2)},  # 77
    128: {32: Tiles(64, 64, 4, 3), 64: Tiles(64, 64, 4, 3), 128: Tiles(64, 64, 4, 2)},
    224: {32: Tiles(128, 32, 8, 3), 64: Tiles(128, 32, 8, 3), 128: Tiles(128, 32, 8, 2)},  # 197
    320: {32: Tiles(64, 32, 4, 3), 64: Tiles(64, 32, 4, 3), 128: Tiles(64, 32, 4, 2)},  # 257
    640: {32: Tiles(128, 64, 8, 3), 64: Tiles(128, 64, 8, 3), 128: Tiles(128, 64, 8, 2)},  # 577
}
_LARGE = _TILES[640]
MAX_HEAD_DIM = 128  # the widest column of the tile table


def tile_config(n: int, block_d: int, dtype: torch.dtype) -> Tiles:
    row = next((r for bucket, r in _TILES.items() if n <= bucket), _LARGE)
    t = row[block_d]
    # fp32 (tests, interpreter) doubles the shared memory per stage: single-buffer it.
    return t._replace(num_stages=1) if dtype == torch.float32 else t


def _launch_args(q: Tensor, key_lengths: Optional[Tensor], causal: bool):
    B, H, N, D = q.shape
    block_d = max(32, next_pow2(D))  # table columns: 32, 64, 128
    if block_d > MAX_HEAD_DIM:
        raise ValueError(f"flash_attention supports head dims up to {MAX_HEAD_DIM}, got {D}")
    t = tile_config(N, block_d, q.dtype)
    lens = q if key_lengths is None else key_lengths  # dummy pointer when HAS_LENS=False
    meta = dict(HEAD_DIM=D, BLOCK_D=block_d, CAUSAL=causal, HAS_LENS=key_lengths is not None,
                EVEN_D=block_d == D, num_warps=t.num_warps, num_stages=t.num_stages)
    return t, lens, meta


def _lengths(key_lengths: Optional[Tensor], q: Tensor) -> Optional[Tensor]:
    return None if key_lengths is None else key_lengths.to(q.device, torch.int32).contiguous()


@torch.library.custom_op("growclip::flash_attention", mutates_args=())
def _attention_op(q: Tensor, k: Tensor, v: Tensor, key_lengths: Optional[Tensor], causal: bool,
                  scale: float) -> tuple[Tensor, Tensor]:
    if q.dim() != 4 or not (q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype):
        raise ValueError("flash_attention expects q, k, v of one [B, H, N, D] shape and dtype")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    key_lengths = _lengths(key_lengths, q)
    B, H, N, D = q.shape
    t, lens, meta = _launch_args(q, key_lengths, causal)
    o = new_empty(q.shape, q.dtype, q.device)
    lse = new_empty((B, H, N), torch.float32, q.device)
    grid = (B * H, triton.cdiv(N, t.block_m))
    _k.attn_fwd[grid](q, k, v, o, lse, lens, scale * LOG2E, N, H, BLOCK_M=t.block_m,
                      BLOCK_N=t.block_n, **meta)
    return o, lse


@_attention_op.register_fake
def _(q, k, v, key_lengths, causal, scale):
    B, H, N, _ = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    return o, q.new_empty((B, H, N), dtype=torch.float32)


@torch.library.custom_op("growclip::flash_attention_backward", mutates_args=())
def _attention_backward_op(do: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor,
                           key_lengths: Optional[Tensor], causal: bool,
                           scale: float) -> tuple[Tensor, Tensor, Tensor]:
    do, q, k, v = do.contiguous(), q.contiguous(), k.contiguous(), v.contiguous()
    key_lengths = _lengths(key_lengths, q)
    B, H, N, D = q.shape
    t, lens, meta = _launch_args(q, key_lengths, causal)
    delta = new_empty((B, H, N), torch.float32, q.device)
    _k.attn_bwd_delta[(B * H, triton.cdiv(N, 64))](o, do, delta, N, HEAD_DIM=D,
                                                   BLOCK_D=meta["BLOCK_D"], BLOCK_M=64)
    dq, dk, dv = (new_empty(q.shape, q.dtype, q.device) for _ in range(3))
    args = (q, k, v, do, lse, delta)
    _k.attn_bwd_dkdv[(B * H, triton.cdiv(N, t.block_m))](
        *args, dk, dv, lens, scale * LOG2E, scale, N, H, BLOCK_M=t.block_n, BLOCK_N=t.block_m,
        **meta)
    _k.attn_bwd_dq[(B * H, triton.cdiv(N, t.block_m))](
        *args, dq, lens, scale * LOG2E, scale, N, H, BLOCK_M=t.block_m, BLOCK_N=t.block_n, **meta)
    return dq, dk, dv


@_attention_backward_op.register_fake
def _(do, q, k, v, o, lse, key_lengths, causal, scale):
    return tuple(torch.empty_like(q, memory_format=torch.contiguous_format) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, key_lengths, causal, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, key_lengths)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, do, _dlse):
    q, k, v, o, lse, key_lengths = ctx.saved_tensors
    dq, dk, dv = torch.ops.growclip.flash_attention_backward(do, q, k, v, o, lse, key_lengths,
                                                             ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                    key_lengths: Optional[Tensor] = None, scale: Optional[float] = None) -> Tensor:
    """softmax(scale * q k^T) v for q, k, v [B, H, N, D] (D <= 128), returned as a contiguous
    [B, H, N, D] tensor of q's dtype. causal masks keys after the query; key_lengths (int [B])
    masks keys at index >= key_lengths[b] (each length must be >= 1). scale defaults to D**-0.5."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not use_triton(q):
        return attention_reference(q, k, v, causal, key_lengths, scale)
    return torch.ops.growclip.flash_attention(q, k, v, key_lengths, causal, scale)[0]
