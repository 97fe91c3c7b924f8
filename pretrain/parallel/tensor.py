"""Tensor parallelism, declared once and applied from outside the model.

`cuts.py` says how every canonical parameter is cut across TP ranks (and holds `shard`/`unshard`, the one
place that knows the cuts); `SWAPS` here says which module becomes which megatron-core layer.
`apply_tensor_parallel` turns a single-device CLIP (built with the same seed on every rank, so every rank starts
from the same full weights) into this rank's shard. Replicated parameters (norms, patch conv, class/positional
embeddings, projections, shared adapters, logit_scale) get identical gradients on every TP rank because the
column-parallel input mapping all-reduces the gradient flowing back into the replicated activations.
"""
from __future__ import annotations

import re

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from megatron.core.model_parallel_config import ModelParallelConfig
from torch import nn

from .cuts import shard, split_of, unshard
from .layout import padded_vocab


# ---- the megatron-core layers, adapted to nn.Linear/nn.Embedding call conventions --------------------------
def _no_init(_):
    pass  # weights are copied in from the full model


class NoExtraState:
    """megatron-core layers put a `_extra_state` entry (None, for Transformer Engine) in their state dict.
    It is no parameter, breaks name-for-name loading across layouts, and DeepSpeed's ds_to_universal crashes
    on it (None.float()), so these layers keep torch's default of no extra state."""
    get_extra_state = nn.Module.get_extra_state
    set_extra_state = nn.Module.set_extra_state


class ColumnParallel(NoExtraState, tensor_parallel.ColumnParallelLinear):
    def forward(self, x):
        return super().forward(x)[0]


class RowParallel(NoExtraState, tensor_parallel.RowParallelLinear):
    def forward(self, x):
        return super().forward(x)[0]


class VocabParallel(NoExtraState, tensor_parallel.VocabParallelEmbedding):
    pass


class ColumnParallelQKV(NoExtraState, tensor_parallel.ColumnParallelLinear):
    """Column-parallel QKV whose (sharded) weights stay on the attention module as in_proj_weight/bias."""

    def forward(self, x, weight, bias):
        return super().forward(x, weight=weight)[0] + bias


def megatron_config(tp: int) -> ModelParallelConfig:
    return ModelParallelConfig(tensor_model_parallel_size=tp, use_cpu_initialization=True,
                               perform_initialization=False, params_dtype=torch.float32,
                               gradient_accumulation_fusion=False)


def _mark_split(param: nn.Parameter, dim: int) -> None:
    """megatron-core sets these only when it initialises weights itself (perform_initialization); DeepSpeed's
    gradient-norm reads them to count a split parameter on every TP rank and a replicated one once."""
    if not hasattr(param, "tensor_model_parallel"):
        tensor_parallel.set_tensor_model_parallel_attributes(param, True, dim, 1)


def _swap_linear(lin: nn.Linear, cut: str, cfg, rank: int, size: int) -> nn.Module:
    cls, kwargs = ((ColumnParallel, {"gather_output": False}) if cut == "column" else
                   (RowParallel, {"input_is_parallel": True, "skip_bias_add": False}))
    new = cls(lin.in_features, lin.out_features, config=cfg, init_method=_no_init, bias=True, **kwargs)
    with torch.no_grad():
        new.weight.copy_(shard(lin.weight, cut, rank, size))
        new.bias.copy_(shard(lin.bias, "column" if cut == "column" else "replicated", rank, size))
    _mark_split(new.weight, 0 if cut == "column" else 1)
    return new


SWAPS = (  # module name pattern -> cut of its weight
    (r"(^|\.)mlp\.c_fc$", "column"),
    (r"(^|\.)mlp\.c_proj$", "row"),
    (r"(^|\.)attn\.out_proj$", "row"),
    (r"(^|\.)attn\.in_proj$", "qkv"),
    (r"^token_embedding$", "vocab"),
)


def apply_tensor_parallel(model: nn.Module, tp: int) -> nn.Module:
    """Swap in megatron-core layers and keep this rank's shard of every split parameter (in place)."""
    if tp == 1:
        return model
    rank = parallel_state.get_tensor_model_parallel_rank()
    cfg = megatron_config(tp)
    for name, module in list(model.named_modules()):
        cut = next((c for pattern, c in SWAPS if re.search(pattern, name)), None)
        if cut is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if cut in ("column", "row"):
            setattr(parent, child, _swap_linear(module, cut, cfg, rank, tp))
        elif cut == "vocab":
            emb = VocabParallel(padded_vocab(module.num_embeddings, tp),
                                                         module.embedding_dim, init_method=_no_init, config=cfg)
            with torch.no_grad():
                emb.weight.copy_(shard(module.weight, "vocab", rank, tp))
            _mark_split(emb.weight, 0)
            setattr(parent, child, emb)
        else:  # qkv: the weights live on the attention module itself
            out_features, width = parent.in_proj_weight.shape  # 3 x heads x head_dim, residual width
            parent.in_proj = ColumnParallelQKV(width, out_features, config=cfg, init_method=_no_init, bias=False,
                                               gather_output=False, skip_weight_param_allocation=True)
            for pname in ("in_proj_weight", "in_proj_bias"):
                local = nn.Parameter(shard(getattr(parent, pname).data, "qkv", rank, tp))
                _mark_split(local, 0)
                setattr(parent, pname, local)
    return model


def gather_full(named_tensors, vocab: int, group=None) -> dict[str, torch.Tensor]:
    """Full canonical tensors from this rank's TP pieces (collective over the TP group)."""
    group = group if group is not None else parallel_state.get_tensor_model_parallel_group()
    size = dist.get_world_size(group)
    out = {}
    for name, local in named_tensors:
        local = local.detach()
        cut = split_of(name)
        if size == 1 or cut == "replicated":
            out[name] = unshard([local.clone()], cut, vocab)
            continue
        pieces = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(pieces, local.contiguous(), group=group)
        out[name] = unshard(pieces, cut, vocab)
    return out
