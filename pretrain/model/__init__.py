"""Single-device model code. Never imports deepspeed; parallelism is applied from pretrain/parallel."""
from .attention import attention, get_backend, set_backend
from .clip import CLIP

__all__ = ["CLIP", "attention", "get_backend", "set_backend"]
