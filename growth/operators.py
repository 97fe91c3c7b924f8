"""The growth operators, one small function per dimension, each returning index maps (growth/index_map.py).

All are exactly function-preserving for integer factors (the method doc's table); `plan.py` applies them to
every parameter name of the model.
- depth: new blocks are spread evenly between the old ones and enter as the identity (their residual outputs,
  attn.out_proj and mlp.c_proj, are zero; their other weights are fresh).
- width: the residual stream is duplicated channel by channel (Net2Net); fan-in weights divide by the copy
  count, so every linear sum is unchanged. LayerNorm statistics are unchanged only for integer factors.
- attention: the inner dim is heads x head_dim. Old heads keep their channels, duplicated within the head when
  head_dim grows (queries scaled so that q.k / sqrt(head_dim) is unchanged); new heads get fresh Q/K/V rows and
  zero out-projection columns.
- mlp: hidden units grown with the width are duplicated like the residual; those added by a larger mlp_ratio
  are new (fresh c_fc rows, zero c_proj columns).
"""
from __future__ import annotations

import math

from pretrain.arch import mlp_hidden

from .index_map import IndexMap


def depth(src_layers: int, dst_layers: int) -> list[int | None]:
    """Source block of each target block (None = new), new blocks spread evenly, one after the last old one."""
    new = dst_layers - src_layers
    if src_layers == 0:
        return [None] * dst_layers
    out: list[int | None] = []
    for i in range(src_layers):
        out.append(i)
        out += [None] * ((i + 1) * new // src_layers - i * new // src_layers)
    return out


def width(src_width: int, dst_width: int) -> IndexMap:
    """The residual (fan-out) map of a width change; consumers take `.fan_in()`."""
    return IndexMap.tile(src_width, dst_width)


def attention(src_heads: int, d_src: int, dst_heads: int, d_dst: int) -> tuple[IndexMap, IndexMap]:
    """(rows of the fused [q; k; v] projection, columns of the out-projection), from heads and head dims."""
    inner = IndexMap.concat([IndexMap.tile(d_src, d_dst)] * src_heads + [IndexMap.new(d_dst)] * (dst_heads - src_heads))
    query = inner.fan_in().scaled(math.sqrt(d_dst / d_src))  # sum over copies x sqrt of the new softmax scale
    return IndexMap.concat([query, inner, inner]), inner.fan_in()


def mlp(src_width: int, src_ratio: float, dst_width: int, dst_ratio: float) -> IndexMap:
    """The hidden-unit (fan-out) map; c_proj takes `.fan_in()`."""
    src_hidden = mlp_hidden(src_width, src_ratio)
    widened = mlp_hidden(dst_width, src_ratio)
    return IndexMap.concat([IndexMap.tile(src_hidden, widened),
                            IndexMap.new(mlp_hidden(dst_width, dst_ratio) - widened)])
