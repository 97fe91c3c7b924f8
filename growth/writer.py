"""Write the grown universal checkpoint: every parameter's fp32 weight and Adam moments, the model-states file
DeepSpeed's universal loading reads its metadata from, and the global optimizer state.

Parameters are streamed one at a time (a source parameter is read, grown and written before the next), so
memory holds the fresh initialisation, the EMA and the module copy, never two optimizer states. A block copied
by depth growth (depth_init "copy") is a TensorMap whose source is the old block's parameter, so its fp32 weight,
Adam moments and EMA are read from that block like any other inherited tensor; its zero residual outputs have
no source (weights and moments zero).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from tqdm import tqdm

from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.model import CLIP
from pretrain.optim import named_groups

from . import universal
from .index_map import TensorMap
from .pim import PIM, fresh_init
from .transform import grow_from_source, source_of


def param_shapes(model: torch.nn.Module) -> list[OrderedDict]:
    """DeepSpeed's `param_shapes`: name -> shape per optimizer group, in pretrain.optim.param_groups order."""
    return [OrderedDict((name, p.shape) for name, p in group) for group in named_groups(model)]


def with_grown_ema(client: dict, grown_ema: dict, pim: PIM) -> dict:
    """The grown client state with its EMA weights replaced by the grown ones (no inheritance: the EMA's warm-up
    starts again)."""
    if not client.get("ema"):
        return client
    return {**client, "ema": {**client["ema"], "shadow": grown_ema, **({} if pim.inherit else {"t": 0})}}


def write_grown(src_tag: Path, dst_tag: Path, dst: Architecture, plan: dict[str, TensorMap], states: dict,
                client: dict, pim: PIM, reset_moments: bool, progress: bool) -> None:
    """Write the grown tag folder from the universal `src_tag`. `states`: the source's model-states file;
    `client`: the grown client state, whose EMA (still the source's) is grown here."""
    init = fresh_init(dst, pim.seed)
    with torch.device("meta"):
        model = CLIP(dst)
    uc_info = ckpt.universal_checkpoint_info([n for n, _ in model.named_parameters()], dst.text.vocab, 1)
    ema = (client.get("ema") or {}).get("shadow") or {}
    step = torch.zeros(()) if reset_moments or not pim.inherit else universal.read_step(src_tag)
    module_dtype = next(iter(states["module"].values())).dtype if states.get("module") else torch.float32
    module, grown_ema = OrderedDict(), {}
    for name in tqdm(list(plan), desc="grow", disable=not progress, dynamic_ncols=True):
        tmap = plan[name]
        tensors = universal.load_parameter(src_tag, tmap.source) if isinstance(tmap.source, str) else {}
        grown = grow_from_source(tmap, tensors, ema, init[name], pim, reset_moments)
        universal.save_parameter(dst_tag, name, grown, universal.entry_keys(name, init[name].shape, uc_info), step)
        module[name] = grown["fp32"].to(module_dtype, copy=True)  # never aliases the EMA in the saved file
        if ema:
            grown_ema[name] = (grown["fp32"] if pim.source == "ema" else
                               pim.blend(pim.mapped(tmap, source_of(tmap, ema), init[name]), init[name]))
    shapes = param_shapes(model)
    universal.write_optimizer_state(src_tag, dst_tag, [len(g) for g in shapes])
    states = {**states, "module": module, "param_shapes": shapes,
              ckpt.CLIENT_KEY: with_grown_ema(client, grown_ema, pim),
              "universal_checkpoint_info": uc_info, "mp_world_size": 1,  # the module written here is whole
              "checkpoint_parallel_dimensions": {"pp_degree": 1, "tp_degree": 1}}
    torch.save(states, dst_tag / ckpt.MODEL_STATES)
