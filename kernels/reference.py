"""Plain torch references: the ground truth of the tests (called with float64 inputs) and the
fallback where the Triton kernels cannot run (no triton, or CPU tensors without the interpreter)."""
from typing import Optional

import torch
import torch.nn.functional as F


def attention_reference(q, k, v, causal: bool = False, key_lengths: Optional[torch.Tensor] = None,
                        scale: Optional[float] = None) -> torch.Tensor:
    """softmax(scale * q k^T + mask) v for q, k, v [B, H, N, D]. Keys at index >= key_lengths[b]
    are masked; causal masks keys after the query. Computed in float32 at least."""
    B, H, N, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    dt = torch.promote_types(q.dtype, torch.float32)
    s = torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)) * scale
    keys = torch.arange(N, device=q.device)
    keep = torch.ones(B, 1, N, N, dtype=torch.bool, device=q.device)
    if key_lengths is not None:
        keep = keep & (keys < key_lengths.to(q.device).view(B, 1, 1, 1))
    if causal:
        keep = keep & (keys[None, :] <= keys[:, None])
    p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
    return torch.matmul(p, v.to(dt)).to(q.dtype)


def contrastive_loss_reference(image_local, text_local, image_all, text_all, logit_scale,
                               offset: int = 0) -> torch.Tensor:
    """OpenCLIP ClipLoss(local_loss=True, gather_with_grad=True) on one rank:
    (CE(s I_local T_all^T, offset + arange(b)) + CE(s T_local I_all^T, offset + arange(b))) / 2.
    Single process: *_all is *_local and offset = 0. Computed in float32 at least."""
    dt = torch.promote_types(image_local.dtype, torch.float32)
    s = logit_scale.to(dt)
    labels = offset + torch.arange(image_local.shape[0], device=image_local.device)
    logits_i = s * image_local.to(dt) @ text_all.to(dt).T
    logits_t = s * text_local.to(dt) @ image_all.to(dt).T
    return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2
