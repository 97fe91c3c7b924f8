"""Tiled symmetric CLIP loss: (CE(s I T^T, labels) + CE(s T I^T, labels)) / 2 without ever
materialising the B x B logits (extra memory O(B*D + B)), as the custom ops
growclip::contrastive_loss / growclip::contrastive_loss_backward.

Forward: one row-LSE pass per direction (image rows vs all texts, text rows vs all images).
Backward: the logit gradient G is recomputed tile by tile; dX = s G Y for the rows of each call.
Single process (*_all is *_local): two backward calls, each applying both directions' softmax
to the shared logit matrix (G = (P_row + P_col - 2 I) / 2B), so dI and dT need no atomics.
Distributed (local rows vs gathered columns, OpenCLIP local_loss + gather_with_grad): four calls,
the gradients of the local rows and of the gathered columns of each direction.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from ._common import new_empty, next_pow2, triton_available, use_triton
from .reference import contrastive_loss_reference

if triton_available():
    import triton

    from . import triton_contrastive as _k


class LossTiles(NamedTuple):
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Fixed tiles (16-bit starting points for H100/H200). BLOCK_K (the reduction chunk over D) is the
# largest power of two <= 64 dividing D; the backward accumulates dX in chunks of BLOCK_DO
# columns of D (grid axis 1; each chunk recomputes the logits, so wider is cheaper if registers
# allow).
FWD_TILES = LossTiles(128, 64, 8, 3)
BWD_TILES = LossTiles(64, 64, 8, 2)
MAX_BLOCK_DO = 256
# Dot precision of every tl.dot for fp32 features (the trainer passes fp32): "tf32" (tensor cores, products of
# 10-bit-mantissa inputs, fp32 accumulation; the logits then carry ~1e-3 relative error, less than the bf16 logits
# of OpenCLIP under autocast) or "ieee" (exact fp32, several times slower). bf16/fp16 features always use the
# native 16-bit tensor-core products with fp32 accumulation. Softmax, LSE and the positive logit are fp32.
DOT_PRECISION = "tf32"


def _block_k(d: int) -> int:
    if d % 16:
        raise ValueError(f"contrastive_loss needs a feature dim divisible by 16, got {d}")
    return min(64, d & -d)


def _lse(x: Tensor, y: Tensor, scale: Tensor, off: int):
    """(log2-domain row LSE of s x y^T, per-row CE of the positive column row + off)."""
    R, D = x.shape
    lse, row_loss = (new_empty((R,), torch.float32, x.device) for _ in range(2))
    t = FWD_TILES
    _k.clip_lse_fwd[(triton.cdiv(R, t.block_m),)](
        x, y, scale, lse, row_loss, R, y.shape[0], off, D=D, BLOCK_M=t.block_m,
        BLOCK_N=t.block_n, BLOCK_K=_block_k(D), DOT_PRECISION=DOT_PRECISION, num_warps=t.num_warps,
        num_stages=t.num_stages)
    return lse, row_loss


def _grad(x: Tensor, y: Tensor, lse_r: Optional[Tensor], lse_c: Optional[Tensor], scale: Tensor,
          grad: Tensor, off: int, coef: float):
    """(dX, d(loss)/d(s) contributions per row) for the logits s x y^T; see clip_grad_rows."""
    R, D = x.shape
    block_do = min(next_pow2(D), MAX_BLOCK_DO)
    n_do = triton.cdiv(D, block_do)
    dx = new_empty(x.shape, x.dtype, x.device)
    rowdot = new_empty((n_do, R), torch.float32, x.device)
    t = BWD_TILES
    _k.clip_grad_rows[(triton.cdiv(R, t.block_m), n_do)](
        x, y, x if lse_r is None else lse_r, x if lse_c is None else lse_c, scale, grad, dx,
        rowdot, R, y.shape[0], off, coef, D=D, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
        BLOCK_K=_block_k(D), BLOCK_DO=block_do, HAS_R=lse_r is not None,
        HAS_C=lse_c is not None, DOT_PRECISION=DOT_PRECISION, num_warps=t.num_warps,
        num_stages=t.num_stages)
    return dx, rowdot


def _contiguous(*ts):
    return [None if t is None else t.contiguous() for t in ts]


@torch.library.custom_op("growclip::contrastive_loss", mutates_args=())
def _loss_op(image_local: Tensor, text_local: Tensor, image_all: Optional[Tensor],
             text_all: Optional[Tensor], logit_scale: Tensor,
             offset: int) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, image-row LSE, text-row LSE); image_all = text_all = None means single process."""
    il, tl_, ia, ta = _contiguous(image_local, text_local, image_all, text_all)
    if ia is None:
        ia, ta = il, tl_
    if not (il.dim() == 2 and il.shape == tl_.shape and ia.shape == ta.shape
            and ia.shape[1] == il.shape[1] and il.dtype == tl_.dtype == ia.dtype == ta.dtype):
        raise ValueError("contrastive_loss expects [b, D] local and [B, D] gathered features "
                         "of one dtype")
    lse_i, loss_i = _lse(il, ta, logit_scale, offset)
    lse_t, loss_t = _lse(tl_, ia, logit_scale, offset)
    return (loss_i.sum() + loss_t.sum()) / (2 * il.shape[0]), lse_i, lse_t


@_loss_op.register_fake
def _(image_local, text_local, image_all, text_all, logit_scale, offset):
    b = image_local.shape[0]
    new = image_local.new_empty
    return new((), dtype=torch.float32), new((b,), dtype=torch.float32), new((b,), dtype=torch.float32)


@torch.library.custom_op("growclip::contrastive_loss_backward", mutates_args=())
def _loss_backward_op(grad: Tensor, image_local: Tensor, text_local: Tensor,
                      image_all: Optional[Tensor], text_all: Optional[Tensor], logit_scale: Tensor,
                      lse_i: Tensor, lse_t: Tensor, offset: int) -> list[Tensor]:
    """[d image_local, d text_local, d logit_scale] (+ [d image_all, d text_all] if distributed)."""
    il, tl_, ia, ta, grad = _contiguous(image_local, text_local, image_all, text_all, grad)
    coef = 1.0 / (2 * il.shape[0])
    if ia is None:
        d_il, rowdot = _grad(il, tl_, lse_i, lse_t, logit_scale, grad, 0, coef)
        d_tl, _ = _grad(tl_, il, lse_t, lse_i, logit_scale, grad, 0, coef)
        extra = []
    else:
        d_il, rowdot_i = _grad(il, ta, lse_i, None, logit_scale, grad, offset, coef)
        d_tl, rowdot_t = _grad(tl_, ia, lse_t, None, logit_scale, grad, offset, coef)
        d_ta, _ = _grad(ta, il, None, lse_i, logit_scale, grad, -offset, coef)
        d_ia, _ = _grad(ia, tl_, None, lse_t, logit_scale, grad, -offset, coef)
        rowdot = torch.cat([rowdot_i.flatten(), rowdot_t.flatten()])
        extra = [d_ia, d_ta]
    d_scale = rowdot.sum().to(logit_scale.dtype).reshape(logit_scale.shape)
    return [d_il, d_tl, d_scale] + extra


@_loss_backward_op.register_fake
def _(grad, image_local, text_local, image_all, text_all, logit_scale, lse_i, lse_t, offset):
    out = [torch.empty_like(image_local), torch.empty_like(text_local), torch.empty_like(logit_scale)]
    if image_all is not None:
        out += [torch.empty_like(image_all), torch.empty_like(text_all)]
    return out


def _setup_context(ctx, inputs, output):
    image_local, text_local, image_all, text_all, logit_scale, offset = inputs
    _, lse_i, lse_t = output
    ctx.save_for_backward(image_local, text_local, image_all, text_all, logit_scale, lse_i, lse_t)
    ctx.offset = offset
    ctx.mark_non_differentiable(lse_i, lse_t)


def _backward(ctx, grad, _dlse_i, _dlse_t):
    il, tl_, ia, ta, scale, lse_i, lse_t = ctx.saved_tensors
    g = torch.ops.growclip.contrastive_loss_backward(grad, il, tl_, ia, ta, scale, lse_i, lse_t,
                                                     ctx.offset)
    d_ia, d_ta = (None, None) if ia is None else (g[3], g[4])
    return g[0], g[1], d_ia, d_ta, g[2], None


_loss_op.register_autograd(_backward, setup_context=_setup_context)


def contrastive_loss(image_local: Tensor, text_local: Tensor, image_all: Tensor, text_all: Tensor,
                     logit_scale: Tensor, offset: int = 0) -> Tensor:
    """Symmetric CLIP loss of the local rows against all columns (fp32 scalar).

    image_local, text_local: [b, D] L2-normalised features of this rank; image_all, text_all:
    [B, D] the features of all ranks (all-gathered with grad), this rank's rows at
    [offset, offset + b); logit_scale: 0-dim tensor, already exp'd and clamped.
    loss = (CE(s I_local T_all^T, offset + arange(b)) + CE(s T_local I_all^T, offset + arange(b))) / 2,
    i.e. OpenCLIP ClipLoss(local_loss=True, gather_with_grad=True). Single process: pass the local
    tensors as *_all (the same objects) and offset 0. Over W ranks the losses sum to W times the
    loss of the concatenated batch, so the gradients summed over ranks (what all_gather's backward
    does for the features) are W times the single-process gradients: DDP's mean over ranks makes
    them equal."""
    if not use_triton(image_local):
        return contrastive_loss_reference(image_local, text_local, image_all, text_all,
                                          logit_scale, offset)
    if image_all is image_local and text_all is text_local:
        if offset:
            raise ValueError("offset must be 0 when *_all are the local tensors")
        image_all = text_all = None
    return torch.ops.growclip.contrastive_loss(image_local, text_local, image_all, text_all,
                                               logit_scale, offset)[0]


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
    """Single-process CLIP loss of a [B, D] batch: contrastive_loss(image, text, image, text, s)."""
    return contrastive_loss(image, text, image, text, logit_scale)
