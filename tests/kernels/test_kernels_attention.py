"""flash_attention (Triton interpreter) vs the float64 torch reference, forward and backward.

Tolerances (max abs error vs float64 on the same rounded inputs, entries O(1)):
  fp32: atol 2e-5, rtol 1e-4 (fp32 accumulation; observed errors ~1e-6)
  fp16: atol 4e-3, rtol 1e-2 (P and dS are rounded to fp16 for the tensor-core dots)
"""
import pytest
import torch

import kernels.attention as attention
from kernels import attention_reference, flash_attention
from kernels._common import new_empty
from tests.kernels.against_reference import attention_against_reference

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=4e-3, rtol=1e-2)}


def _lengths(B, N):
    """Full length, a short one (< any tile) and a random one; always >= 1."""
    return torch.tensor([N, 1, 5, int(torch.randint(1, N, ()))][:B], dtype=torch.int32)


def _check(B, H, N, D, causal, with_lengths, dtype):
    q, k, v = (torch.randn(B, H, N, D).to(dtype).requires_grad_() for _ in range(3))
    lens = _lengths(B, N) if with_lengths else None
    out, grads, ref, ref_grads = attention_against_reference(q, k, v, causal, lens)

    assert out.dtype == dtype and out.shape == q.shape
    torch.testing.assert_close(out.double(), ref, **TOL[dtype])
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g.double(), r, **TOL[dtype], msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("N,D,causal,with_lengths", [
    (50, 32, False, False),
    (50, 128, False, True),
    (77, 64, True, False),
    (77, 80, True, True),
    (197, 80, False, True),
    (197, 64, True, False),
    (257, 32, True, True),
])
def test_fp32(N, D, causal, with_lengths):
    _check(2, 1, N, D, causal, with_lengths, torch.float32)


@pytest.mark.parametrize("N,D,causal,with_lengths", [
    (50, 32, False, False),
    (77, 64, True, True),
    (197, 80, False, True),
])
def test_fp16(N, D, causal, with_lengths):
    _check(2, 1, N, D, causal, with_lengths, torch.float16)


@pytest.mark.parametrize("tiles", [attention.Tiles(16, 64, 4, 1), attention.Tiles(64, 16, 4, 1),
                                   attention.Tiles(32, 32, 4, 1)])
def test_tile_shapes(monkeypatch, tiles):
    """Tiles other than the table's: BLOCK_M < BLOCK_N, BLOCK_M > BLOCK_N, many full tiles."""
    monkeypatch.setattr(attention, "tile_config", lambda n, d, dtype: tiles)
    _check(4, 1, 77, 32, True, True, torch.float32)
    _check(2, 1, 77, 32, False, True, torch.float32)


def test_layout_heads_and_scale():
    """Non-contiguous [B, N, H, D] -> [B, H, N, D] views, H > 1, explicit scale."""
    B, N, H, D = 2, 50, 2, 32
    q, k, v = (torch.randn(B, N, H, D).transpose(1, 2) for _ in range(3))
    out = flash_attention(q, k, v, scale=0.3)
    assert out.is_contiguous()
    ref = attention_reference(q.double(), k.double(), v.double(), scale=0.3)
    torch.testing.assert_close(out.double(), ref, **TOL[torch.float32])


def test_poison_enabled():
    """The tests run with NaN-filled output buffers, so unwritten elements fail the checks."""
    assert torch.isnan(new_empty((3,), torch.float32, "cpu")).all()


def test_opcheck():
    q, k, v = (torch.randn(1, 2, 20, 16, requires_grad=True) for _ in range(3))
    lens = torch.tensor([7], dtype=torch.int32)
    torch.library.opcheck(torch.ops.growclip.flash_attention.default, (q, k, v, lens, True, 0.25))
