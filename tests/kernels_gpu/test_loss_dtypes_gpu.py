"""The loss paths a 16-bit run takes (pretrain/loss.py: features in the training dtype), on a GPU, against float64
on the same rounded features: the torch path (16-bit GEMMs writing fp32 logits through torch.mm's out_dtype, which
the CPU lacks), eager and compiled as the trainer compiles it (fullgraph), and the Triton loss at the shape of the
issue 19 target (B = 65536, D = 512, bf16). Skipped without CUDA. Bounds (normalised errors, as in
test_kernels_gpu.py): loss 1e-4 relative (16-bit products are exact in fp32 accumulators), d logit_scale 5e-3 and
d features 2e-2 in bf16, 5e-3 in fp16 (the logit gradient is rounded to the feature dtype for its GEMMs).
Not yet run on a GPU (docs/perf.md)."""
import pytest
import torch
import torch.nn.functional as F

from kernels import _common, clip_loss, contrastive_loss_reference
from pretrain.loss import clip_loss_torch
from tests.kernels_gpu.test_kernels_gpu import _err, _report

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or _common.INTERPRET,
                                reason="needs CUDA (and TRITON_INTERPRET unset or 0)")
LOSS, LOSS_SCALE = 1e-4, {torch.bfloat16: 5e-3, torch.float16: 1e-3}
LOSS_GRAD = {torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _check(kind, fn, B, D, dtype, reference_rows=None):
    torch.manual_seed(0)
    image, text = (F.normalize(torch.randn(B, D, device="cuda"), dim=-1).to(dtype).requires_grad_()
                   for _ in range(2))
    scale = torch.tensor(50.0, device="cuda", requires_grad=True)
    loss = fn(image, text, scale)
    grads = torch.autograd.grad(loss, (image, text, scale))
    i64, t64, s64 = (x.detach().double().requires_grad_() for x in (image, text, scale))
    ref = contrastive_loss_reference(i64, t64, i64, t64, s64)
    ref_grads = torch.autograd.grad(ref, (i64, t64, s64))
    errors = {"loss": abs(loss.item() - ref.item()) / abs(ref.item()), "d_scale": _err(grads[2], ref_grads[2]),
              "d_features": max(_err(grads[0], ref_grads[0]), _err(grads[1], ref_grads[1]))}
    _report(kind, dtype=dtype, B=B, D=D, **errors)
    assert loss.dtype == torch.float32 and grads[0].dtype == grads[1].dtype == dtype
    assert errors["loss"] <= LOSS and errors["d_scale"] <= LOSS_SCALE[dtype], errors
    assert errors["d_features"] <= LOSS_GRAD[dtype], errors


def _torch_loss(image, text, scale):
    return clip_loss_torch(image, text, image, text, scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_torch_path(dtype):
    _check("loss_torch_path", _torch_loss, 4096, 512, dtype)


def test_torch_path_compiled():
    _check("loss_torch_path_compiled", torch.compile(_torch_loss, fullgraph=True, dynamic=False), 4096, 512,
           torch.bfloat16)


@pytest.mark.skipif(not _common.triton_available(), reason="needs triton")
def test_triton_loss_at_the_target_shape():
    """B = 65536 (the float64 reference needs 2 x 32 GiB of logits: only the forward is compared there)."""
    torch.manual_seed(0)
    B, D = 65536, 512
    image, text = (F.normalize(torch.randn(B, D, device="cuda"), dim=-1).to(torch.bfloat16).requires_grad_()
                   for _ in range(2))
    scale = torch.tensor(50.0, device="cuda")
    loss = clip_loss(image, text, scale)
    grads = torch.autograd.grad(loss, (image, text))
    with torch.no_grad():  # float64 in row blocks: fp32 logits of exact bf16 products would do as well
        lse_i, lse_t, pos = [], torch.zeros(B, dtype=torch.float64, device="cuda"), []
        i64, t64 = image.double(), text.double()
        for r in range(0, B, 4096):
            z = 50.0 * i64[r:r + 4096] @ t64.T
            lse_i.append(torch.logsumexp(z, 1))
            pos.append(z[:, r:r + 4096].diagonal())
            lse_t = torch.logaddexp(lse_t, torch.logsumexp(z, 0)) if r else torch.logsumexp(z, 0)
        pos = torch.cat(pos)
        ref = ((torch.cat(lse_i) - pos).mean() + (lse_t - pos).mean()) / 2
    err = abs(loss.item() - ref.item()) / abs(ref.item())
    _report("loss_triton_B65536", dtype=torch.bfloat16, B=B, D=D, loss=err)
    assert err <= LOSS and all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)
