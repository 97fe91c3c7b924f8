"""The Triton kernels compiled for a real GPU (bf16, fp16, fp32) against the float64 references on the same rounded
inputs, forward and backward. Skipped without CUDA, and when the interpreter is on (tests/kernels runs that on the
CPU): `make bench-gpu` runs this folder alone with TRITON_INTERPRET=0.

Errors are normalised: max |ours - reference| / max |reference| per tensor. Bounds per dtype:
  attention  out: fp32 5e-3 (TF32 dots), fp16 5e-3, bf16 3e-2 (P and dS rounded to 16 bits for the dots);
             dq, dk, dv: fp32 1e-2, fp16 1e-2, bf16 5e-2
  loss       loss: fp32 2e-3 (TF32 dots, kernels/contrastive.py DOT_PRECISION), fp16/bf16 1e-4 (16-bit products
             are exact in the fp32 accumulators); d logit_scale: fp32 1e-2, fp16 1e-3, bf16 5e-3 (the logit
             gradient is rounded to the feature dtype for its dot); d features: fp32 1e-2, fp16 5e-3, bf16 2e-2
             (stored in the feature dtype)
Measured with the same checks on the CPU interpreter (fp32 without TF32, fp16; smaller shapes): attention <= 5e-4
(fp16), loss <= 1e-7, d logit_scale <= 1.5e-5 (fp16), d features <= 7e-4 (fp16).
With GROWCLIP_GPU_REPORT=FILE every check appends its observed errors to FILE (JSON lines) for docs/perf.md.
"""
import json
import os

import pytest
import torch
import torch.nn.functional as F

from kernels import (
    _common,
    clip_loss,
    contrastive_loss,
    contrastive_loss_reference,
)
from tests.kernels.against_reference import attention_against_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or _common.INTERPRET or not _common.triton_available(),
                                reason="needs CUDA and compiled Triton (TRITON_INTERPRET unset or 0)")
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
ATTN_OUT = {torch.float32: 5e-3, torch.float16: 5e-3, torch.bfloat16: 3e-2}
ATTN_GRAD = {torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 5e-2}
LOSS = {torch.float32: 2e-3, torch.float16: 1e-4, torch.bfloat16: 1e-4}
LOSS_SCALE = {torch.float32: 1e-2, torch.float16: 1e-3, torch.bfloat16: 5e-3}
LOSS_GRAD = {torch.float32: 1e-2, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _report(kind: str, **values) -> None:
    path = os.environ.get("GROWCLIP_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"check": kind, **{k: (str(v) if isinstance(v, torch.dtype) else v)
                                                   for k, v in values.items()}}) + "\n")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("B,H,N,D,causal,lengths", [
    (4, 12, 197, 64, False, False),   # ViT-B/16
    (4, 8, 77, 64, True, True),       # text, padded keys
    (2, 4, 197, 80, False, True),     # head dim 80 (masked d)
    (2, 4, 50, 128, True, False),     # head dim 128, ViT-B/32
])  # few shapes: each (dtype, shape class) compiles four kernels, and make bench-gpu has 90 s for this file
def test_attention(B, H, N, D, causal, lengths, dtype):
    q, k, v = (torch.randn(B, H, N, D, device="cuda").to(dtype).requires_grad_() for _ in range(3))
    lens = torch.randint(1, N + 1, (B,), device="cuda", dtype=torch.int32) if lengths else None
    out, grads, ref, ref_grads = attention_against_reference(q, k, v, causal, lens)
    assert out.dtype == dtype and torch.isfinite(out).all()
    errors = {"out": _err(out, ref), **{f"d{n}": _err(g, r) for n, g, r in zip("qkv", grads, ref_grads)}}
    _report("attention", dtype=dtype, shape=[B, H, N, D], causal=causal, lengths=lengths, **errors)
    assert errors["out"] <= ATTN_OUT[dtype], errors
    assert max(errors[g] for g in ("dq", "dk", "dv")) <= ATTN_GRAD[dtype], errors


def _features(B, D, dtype):
    return [F.normalize(torch.randn(B, D, device="cuda"), dim=-1).to(dtype).requires_grad_() for _ in range(2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("B,D,world", [(4096, 512, 1), (333, 80, 1), (2048, 512, 4)])
def test_loss(B, D, world, dtype):
    """Single process (clip_loss), or `world` emulated ranks: rank r's loss on its rows against all columns (the
    distributed mode's four backward calls); the mean over ranks is the whole batch's loss, with its gradients."""
    image, text = _features(B, D, dtype)
    scale = torch.tensor(float(torch.empty(()).uniform_(10.0, 100.0)), device="cuda", requires_grad=True)
    if world == 1:
        loss = clip_loss(image, text, scale)
    else:
        b = B // world
        loss = sum(contrastive_loss(image[r * b:(r + 1) * b], text[r * b:(r + 1) * b], image, text, scale,
                                    offset=r * b) for r in range(world)) / world
    grads = torch.autograd.grad(loss, (image, text, scale))
    i64, t64, s64 = (x.detach().double().requires_grad_() for x in (image, text, scale))
    ref = contrastive_loss_reference(i64, t64, i64, t64, s64)
    ref_grads = torch.autograd.grad(ref, (i64, t64, s64))
    # the ranks' losses (and gradients) sum to W x the whole batch's; averaged over ranks above, they equal them
    errors = {"loss": abs(float(loss) - float(ref)) / abs(float(ref)), "d_image": _err(grads[0], ref_grads[0]),
              "d_text": _err(grads[1], ref_grads[1]), "d_scale": _err(grads[2], ref_grads[2])}
    _report("loss", dtype=dtype, B=B, D=D, world=world, **errors)
    assert loss.dtype == torch.float32
    assert errors["loss"] <= LOSS[dtype] and errors["d_scale"] <= LOSS_SCALE[dtype], errors
    assert max(errors["d_image"], errors["d_text"]) <= LOSS_GRAD[dtype], errors
