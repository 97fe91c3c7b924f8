"""flash_attention beside the float64 torch reference on the same inputs, forward and backward: the shared
body of the interpreter tests (tests/kernels) and the GPU tests (tests/kernels_gpu)."""
import torch

from kernels import attention_reference, flash_attention


def attention_against_reference(q, k, v, causal: bool, key_lengths):
    """(out, (dq, dk, dv), reference out, reference grads) for one random upstream gradient."""
    out = flash_attention(q, k, v, causal=causal, key_lengths=key_lengths)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention_reference(q64, k64, v64, causal=causal, key_lengths=key_lengths)
    return out, grads, ref, torch.autograd.grad(ref, (q64, k64, v64), do.double())
