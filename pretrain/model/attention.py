"""The one attention function every block calls, so that the Triton kernel can replace SDPA in one place.

`set_backend("triton")` switches to kernels.flash_attention (a torch custom op); "torch" uses SDPA.
"""
import torch
import torch.nn.functional as F

_BACKEND = "torch"


def set_backend(name: str) -> None:
    global _BACKEND
    if name not in ("torch", "triton"):
        raise ValueError(f"kernels must be 'torch' or 'triton', got {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """q, k, v: [batch, heads, tokens, head_dim] -> [batch, heads, tokens, head_dim]."""
    if _BACKEND == "triton":
        from kernels import flash_attention
        return flash_attention(q, k, v, causal=causal)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
