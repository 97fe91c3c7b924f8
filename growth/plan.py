"""The growth plan: one TensorMap per parameter of CLIP(target), built from the operators.

Parameter names are the canonical (OpenCLIP) ones. Every axis of the model is one of: a tower's residual width
(conv1, class/positional embeddings, ln_pre, blocks, token embedding), the attention inner dim, the MLP hidden
dim, or the pooled feature width (ln_post/proj, ln_final/text_projection, and the rows of the shared adapters),
which is the shared width once a shared encoder runs. A missing adapter stands for the identity, so adding the
first shared layers, or widening a tower past the shared width, is exact too.

`split` (IndexMap.fan_in) is the unequal share of duplicated units in every weight that reads them: residual
readers (attention in_proj and mlp.c_fc columns, proj/text_projection rows, adapter columns), MLP hidden
(c_proj columns), head_dim (out_proj columns, queries). `depth_init` says what a new block's non-residual
weights are: "fresh" (θ_init) or "copy" (a TensorMap from the old block it follows, operators.stacked, through
the same index maps as that block's own weights, moments included); its residual outputs are zero either way.
"""
from __future__ import annotations

import torch

from pretrain.arch import Architecture
from pretrain.model import CLIP

from . import operators as op
from .errors import GrowthError
from .index_map import Identity, IndexMap, TensorMap

RESIDUAL_OUTPUTS = ("attn.out_proj.", "mlp.c_proj.")  # zero where new: a new block or unit adds nothing


def _stack(prefix: str, src, dst, src_layers: int, split: float, depth_init: str) -> dict[str, TensorMap]:
    """Maps for one stack of blocks (src/dst: the tower or shared-encoder part of the architectures)."""
    inherited = op.depth(src_layers, dst.layers)
    copied = op.stacked(src_layers, dst.layers) if depth_init == "copy" else inherited
    names = _block_param_names()
    maps = {}
    dims = _block_dims(src, dst, split) if src_layers else {}
    for i, (own, j) in enumerate(zip(inherited, copied)):
        for suffix in names:
            zero = suffix.startswith(RESIDUAL_OUTPUTS)
            if j is None or (own is None and zero):  # a new block's residual outputs: zero, moments zero
                tmap = TensorMap(None, new="zero" if zero else "init")
            else:
                tmap = TensorMap(f"{prefix}{j}.{suffix}", dims[suffix], "zero" if zero else "init")
            maps[f"{prefix}{i}.{suffix}"] = tmap
    return maps


def _block_dims(src, dst, split: float) -> dict[str, tuple[IndexMap, ...]]:
    res = op.width(src.width, dst.width)
    qkv, inner_in = op.attention(src.heads, src.attn_head_dim, dst.heads, dst.attn_head_dim, split)
    hidden = op.mlp(src.width, src.mlp_ratio, dst.width, dst.mlp_ratio)
    res_in = res.fan_in(split)
    return {
        "ln_1.weight": (res,), "ln_1.bias": (res,),
        "attn.in_proj_weight": (qkv, res_in), "attn.in_proj_bias": (qkv,),
        "attn.out_proj.weight": (res, inner_in), "attn.out_proj.bias": (res,),
        "ln_2.weight": (res,), "ln_2.bias": (res,),
        "mlp.c_fc.weight": (hidden, res_in), "mlp.c_fc.bias": (hidden,),
        "mlp.c_proj.weight": (res, hidden.fan_in(split)), "mlp.c_proj.bias": (res,),
    }


def _block_param_names() -> list[str]:
    from pretrain.model.blocks import ResidualBlock
    with torch.device("meta"):
        return [n for n, _ in ResidualBlock(2, 1, 2, 2).named_parameters()]


def _adapter(name: str, src: Architecture, dst: Architecture, pooled: IndexMap,
             split: float) -> dict[str, TensorMap]:
    """shared.adapter_{visual,text}: rows follow the pooled (shared) axis, columns the tower's residual."""
    tower = "vision" if name == "visual" else "text"
    key = f"shared.adapter_{name}"
    src_has = src.shared.layers > 0 and getattr(src, tower).width != src.shared.width
    cols = op.width(getattr(src, tower).width, getattr(dst, tower).width).fan_in(split)
    if src_has:
        return {f"{key}.weight": TensorMap(f"{key}.weight", (pooled, cols)),
                f"{key}.bias": TensorMap(f"{key}.bias", (pooled,))}
    return {f"{key}.weight": TensorMap(Identity(getattr(src, tower).width), (pooled, cols)),
            f"{key}.bias": TensorMap(None, new="zero")}


def plan_growth(src: Architecture, dst: Architecture, split: float = 0.0,
                depth_init: str = "fresh") -> dict[str, TensorMap]:
    """TensorMap of every parameter of CLIP(dst). Call space.check_growth(src, dst) first. `split` in [0, 1):
    the unequal share of duplicated units (0: plain tiling); `depth_init`: "fresh" or "copy" (module doc)."""
    op.check_settings(split, depth_init, "growth")
    split = float(split)
    rv = op.width(src.vision.width, dst.vision.width)
    rt = op.width(src.text.width, dst.text.width)
    pv = op.width(src.vision_out_width, dst.vision_out_width)
    pt = op.width(src.text_out_width, dst.text_out_width)
    ident = IndexMap.identity
    v = dst.vision
    maps = {
        "positional_embedding": TensorMap("positional_embedding", (ident(dst.text.context), rt)),
        "text_projection": TensorMap("text_projection", (pt.fan_in(split), ident(dst.embed_dim))),
        "logit_scale": TensorMap("logit_scale", (ident(1),)),
        "visual.class_embedding": TensorMap("visual.class_embedding", (rv,)),
        "visual.positional_embedding": TensorMap("visual.positional_embedding", (ident(v.tokens), rv)),
        "visual.proj": TensorMap("visual.proj", (pv.fan_in(split), ident(dst.embed_dim))),
        "visual.conv1.weight": TensorMap("visual.conv1.weight", (rv, ident(3), ident(v.patch), ident(v.patch))),
        "visual.ln_pre.weight": TensorMap("visual.ln_pre.weight", (rv,)),
        "visual.ln_pre.bias": TensorMap("visual.ln_pre.bias", (rv,)),
        "visual.ln_post.weight": TensorMap("visual.ln_post.weight", (pv,)),
        "visual.ln_post.bias": TensorMap("visual.ln_post.bias", (pv,)),
        "token_embedding.weight": TensorMap("token_embedding.weight", (ident(dst.text.vocab), rt)),
        "ln_final.weight": TensorMap("ln_final.weight", (pt,)),
        "ln_final.bias": TensorMap("ln_final.bias", (pt,)),
    }
    stack = {"split": split, "depth_init": depth_init}
    maps.update(_stack("visual.transformer.resblocks.", src.vision, dst.vision, src.vision.layers, **stack))
    maps.update(_stack("transformer.resblocks.", src.text, dst.text, src.text.layers, **stack))
    if dst.shared.layers:
        maps.update(_stack("shared.transformer.resblocks.", src.shared, dst.shared, src.shared.layers, **stack))
        if dst.vision.width != dst.shared.width:
            maps.update(_adapter("visual", src, dst, pv, split))
        if dst.text.width != dst.shared.width:
            maps.update(_adapter("text", src, dst, pt, split))
    with torch.device("meta"):
        expected = {n for n, _ in CLIP(dst).named_parameters()}
    if set(maps) != expected:
        raise GrowthError(f"growth plan and model disagree: unplanned {sorted(expected - set(maps))[:5]}, "
                          f"unknown {sorted(set(maps) - expected)[:5]}")
    return maps
