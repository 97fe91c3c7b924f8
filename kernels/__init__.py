"""GrowCLIP Triton kernels: flash attention and the tiled CLIP loss (see README.md).

Importing never needs triton: without it (or on CPU tensors without TRITON_INTERPRET=1) the
public functions run the torch references."""
from ._common import triton_available
from .attention import flash_attention
from .contrastive import clip_loss, contrastive_loss
from .reference import attention_reference, contrastive_loss_reference

__all__ = ["attention_reference", "clip_loss", "contrastive_loss", "contrastive_loss_reference",
           "flash_attention", "triton_available"]
