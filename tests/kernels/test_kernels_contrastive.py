"""Tiled CLIP loss (Triton interpreter) vs the float64 torch reference, forward and backward,
including d(logit_scale).

Tolerances (vs float64 on the same rounded inputs; the loss is always fp32):
  fp32: atol 1e-5, rtol 1e-4 on the loss and all gradients (observed ~1e-7)
  fp16: loss and d(logit_scale) atol 1e-4, rtol 1e-4 (observed ~5e-6); feature gradients
        atol 1e-3, rtol 1e-2 (they are fp16: entries up to ~0.8 at s = 100, ulp 4.9e-4;
        observed 3e-4)
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import clip_loss, contrastive_loss, contrastive_loss_reference

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float16: dict(atol=1e-4, rtol=1e-4)}
GRAD_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.float16: dict(atol=1e-3, rtol=1e-2)}


def _features(B, D, dtype):
    return [F.normalize(torch.randn(B, D), dim=-1).to(dtype).requires_grad_() for _ in range(2)]


def _reference(image, text, scale, b=None, offset=0):
    """float64 reference loss and grads wrt (image, text, scale) for rows [offset, offset + b)."""
    i64, t64, s64 = (x.detach().double().requires_grad_() for x in (image, text, scale))
    b = image.shape[0] if b is None else b
    loss = contrastive_loss_reference(i64[offset:offset + b], t64[offset:offset + b], i64, t64,
                                      s64, offset)
    return loss, torch.autograd.grad(loss, (i64, t64, s64))


def _assert_grads(grads, ref_grads, dtype, factor=1.0):
    for name, g, r in zip(("image", "text", "logit_scale"), grads, ref_grads):
        tol = GRAD_TOL[dtype] if name != "logit_scale" else TOL[dtype]
        torch.testing.assert_close(g.double(), factor * r, **tol, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("B,D,dtype", [
    *[(B, D, torch.float32) for B in (33, 100, 257) for D in (32, 80)],
    (100, 80, torch.float16),
    (257, 32, torch.float16),
])
def test_single_process(B, D, dtype):
    image, text = _features(B, D, dtype)
    scale = torch.tensor(float(torch.empty(()).uniform_(10.0, 100.0)), requires_grad=True)
    loss = clip_loss(image, text, scale)
    grads = torch.autograd.grad(loss, (image, text, scale))
    ref, ref_grads = _reference(image, text, scale)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), ref, **TOL[dtype])
    _assert_grads(grads, ref_grads, dtype)


@pytest.mark.parametrize("B,D,world,dtype", [(66, 32, 2, torch.float32), (99, 80, 3, torch.float32),
                                              (99, 80, 3, torch.float16)])
def test_rank_losses_sum_to_world_times_single(B, D, world, dtype):
    """Emulated ranks in one process: rank r's loss on its rows against all columns is the
    reference local loss, and summing the ranks' losses gives W x (loss, gradients) of the
    concatenated batch (autograd sums over the slices as all_gather's backward does). fp16: the
    16-bit features the trainer passes in a 16-bit run, the same tolerances as single process."""
    image, text = _features(B, D, dtype)
    scale = torch.tensor(30.0, requires_grad=True)
    b = B // world
    total = 0.0
    for r in range(world):
        off = r * b
        loss = contrastive_loss(image[off:off + b], text[off:off + b], image, text, scale, off)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), _reference(image, text, scale, b, off)[0], **TOL[dtype])
        total = total + loss
    grads = torch.autograd.grad(total, (image, text, scale))
    assert grads[0].dtype == grads[1].dtype == dtype
    ref, ref_grads = _reference(image, text, scale)
    torch.testing.assert_close(total.double() / world, ref, **TOL[dtype])
    _assert_grads(grads, ref_grads, dtype, factor=world)


def test_opcheck():
    image, text = (F.normalize(torch.randn(40, 32), dim=-1).requires_grad_() for _ in range(2))
    scale = torch.tensor(20.0, requires_grad=True)
    op = torch.ops.growclip.contrastive_loss.default
    torch.library.opcheck(op, (image, text, None, None, scale, 0))
    torch.library.opcheck(op, (image[20:], text[20:], image, text, scale, 20))
