"""The one attention function every block calls, so that the Triton kernel can replace SDPA in one place.

`set_backend("triton")` switches to kernels.flash_attention (a torch custom op); "torch" uses SDPA; "auto" asks
kernels.auto, per shape class, what a recorded benchmark on this GPU found fastest (SDPA without a record).
"""
import torch
import torch.nn.functional as F

_BACKEND = "torch"


def set_backend(name: str) -> None:
    global _BACKEND
    if name not in ("torch", "triton", "auto"):
        raise ValueError(f"kernels must be 'torch', 'triton' or 'auto', got {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """q, k, v: [batch, heads, tokens, head_dim] -> [batch, heads, tokens, head_dim]."""
    if _BACKEND == "triton" or (_BACKEND == "auto" and _auto_triton(q, causal)):
        from kernels import flash_attention
        return flash_attention(q, k, v, causal=causal)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def _auto_triton(q: torch.Tensor, causal: bool) -> bool:
    from kernels.auto import attention_impl
    return attention_impl(q.shape[-2], q.shape[-1], causal) == "triton"
