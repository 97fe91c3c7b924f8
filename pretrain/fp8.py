"""`train.fp8`: the towers' nn.Linear layers trained in float8 through torchao (`convert_to_float8_training`, its
default recipe: dynamic tensorwise scales, e4m3 for the forward and the gradients' GEMMs in the backward).

fp8 GEMMs need an sm_89+ GPU (Ada, Hopper, Blackwell) and torchao; anything else is refused with one line before
the model is built. Tensor parallelism is refused too: its layers are megatron-core's, which torchao does not
convert. The converted layers keep their parameter names and shapes (Float8Linear is an nn.Linear), so
checkpoints, EMA, growth and export see the same model. What is converted: every nn.Linear whose in and out
features are multiples of 16 (the fp8 GEMM's alignment); the fused QKV projection is a plain parameter
(model/blocks.py) and stays in the training dtype, as do the embeddings, projections and norms.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

from .config import ConfigError

MIN_CAPABILITY = (8, 9)


def fp8_refusal(device: torch.device, tp: int) -> str | None:
    """Why train.fp8 cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"float8 training needs a CUDA GPU of compute capability >= 8.9; this run is on {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        return (f"float8 training needs compute capability >= 8.9; {torch.cuda.get_device_name(device)} has "
                f"{capability[0]}.{capability[1]}")
    if importlib.util.find_spec("torchao") is None:
        return "float8 training needs torchao (pip install --no-deps torchao==0.18.0, see requirements-nodeps.txt)"
    if tp > 1:
        return f"float8 training converts nn.Linear layers, and parallel.tp={tp} uses megatron-core's instead"
    return None


def check_fp8(enabled: bool, device: torch.device, tp: int) -> None:
    """Raise ConfigError (one line naming train.fp8 and the reason) when fp8 is asked for and cannot run here."""
    reason = fp8_refusal(device, tp) if enabled else None
    if reason:
        raise ConfigError(f"train.fp8=true refused: {reason}; set train.fp8=false")


def fp8_eligible(module: nn.Module, _name: str = "") -> bool:
    return (isinstance(module, nn.Linear) and module.in_features % 16 == 0
            and module.out_features % 16 == 0)


def convert_to_fp8(model: nn.Module) -> int:
    """Swap the eligible nn.Linear layers for torchao's Float8Linear in place; returns how many were swapped."""
    from torchao.float8 import convert_to_float8_training

    before = sum(fp8_eligible(m) for m in model.modules())
    convert_to_float8_training(model, module_filter_fn=fp8_eligible)
    return before
