"""Helpers shared by the kernel wrappers: Triton detection, dispatch and output allocation."""
import importlib.util
import os

import torch

# Read once at import: tests set TRITON_INTERPRET=1 before importing kernels.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


def triton_available() -> bool:
    """True when the triton package can be imported (it is never imported here)."""
    return importlib.util.find_spec("triton") is not None


_TRITON = triton_available()


def use_triton(t: torch.Tensor) -> bool:
    """Run the Triton kernels for t: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    return _TRITON and (t.is_cuda or INTERPRET)


def new_empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, or a NaN-filled tensor when GROWCLIP_KERNELS_POISON=1 (tests), so that any
    element a kernel fails to write shows up as NaN."""
    if os.environ.get("GROWCLIP_KERNELS_POISON") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def next_pow2(x: int) -> int:
    return 1 << max(x - 1, 0).bit_length()
