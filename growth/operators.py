"""The growth operators, one small function per dimension, each returning index maps (growth/index_map.py).

All are exactly function-preserving for integer factors (the method doc's table); `plan.py` applies them to
every parameter name of the model. `split` is the symmetry-breaking share of duplicated units (IndexMap.fan_in):
0 is plain tiling; any value in [0, 1) is exact.
- depth: new blocks are spread evenly between the old ones and enter as the identity (their residual outputs,
  attn.out_proj and mlp.c_proj, weight and bias, are zero). Their other weights are fresh (`depth_init="fresh"`)
  or copies of the old block each follows (`"copy"`, `stacked`).
- width: the residual stream is duplicated channel by channel (Net2Net); the copies' fan-in weights share the
  original (`fan_in(split)`), so every linear sum is unchanged. LayerNorm statistics are unchanged only for
  integer factors.
- attention: the inner dim is heads x head_dim. Old heads keep their channels, duplicated within the head when
  head_dim grows: keys and values tiled, the queries' copies share sqrt(d'/d)·q by `fan_in(split)` so that
  q.k / sqrt(head_dim) is unchanged (sum_r frac_r·q_j·k_j = q_j·k_j), the out-projection's columns share by
  the same fractions; new heads get fresh Q/K/V rows and zero out-projection columns.
- mlp: hidden units grown with the width are duplicated like the residual (c_proj columns share by
  `fan_in(split)`); those added by a larger mlp_ratio are new (fresh c_fc rows, zero c_proj columns).
"""
from __future__ import annotations

import math

from pretrain.arch import mlp_hidden

from .errors import GrowthError
from .index_map import IndexMap

DEPTH_INITS = ("copy", "fresh")  # the non-residual weights of a new block: its predecessor's, or fresh


def check_settings(split, depth_init: str, owner: str) -> None:
    """GrowthError naming `owner` (PIM, growth) when the symmetry split is not a number in [0, 1) or depth_init
    is not one of DEPTH_INITS."""
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 <= split < 1.0:
        raise GrowthError(f"{owner} split must be a number in [0, 1), got {split!r}")
    if depth_init not in DEPTH_INITS:
        raise GrowthError(f"{owner} depth_init must be one of {', '.join(DEPTH_INITS)}, got {depth_init!r}")


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


def stacked(src_layers: int, dst_layers: int) -> list[int | None]:
    """Source block whose weights each target block holds under depth_init="copy": an old block its own, a new
    block the old block it follows (`depth` puts every new block after an old one), so a x2 stack of blocks
    [0, 1] is [0, 0', 1, 1'], each block doubled in place (not G_stack's [0, 1, 0, 1]). None only without old
    blocks (a first shared encoder), where every block is fresh."""
    out: list[int | None] = []
    last = None
    for j in depth(src_layers, dst_layers):
        last = j if j is not None else last
        out.append(last)
    return out


def width(src_width: int, dst_width: int) -> IndexMap:
    """The residual (fan-out) map of a width change; consumers take `.fan_in(split)`."""
    return IndexMap.tile(src_width, dst_width)


def attention(src_heads: int, d_src: int, dst_heads: int, d_dst: int,
              split: float = 0.0) -> tuple[IndexMap, IndexMap]:
    """(rows of the fused [q; k; v] projection, columns of the out-projection), from heads and head dims. Keys
    and values are tiled; the copies of a query dim share it (`fan_in(split)`), so sum_r frac_r·q·k = q·k."""
    inner = IndexMap.concat([IndexMap.tile(d_src, d_dst)] * src_heads + [IndexMap.new(d_dst)] * (dst_heads - src_heads))
    query = inner.fan_in(split).scaled(math.sqrt(d_dst / d_src))  # shares of the copies x sqrt of the new scale
    return IndexMap.concat([query, inner, inner]), inner.fan_in(split)


def mlp(src_width: int, src_ratio: float, dst_width: int, dst_ratio: float) -> IndexMap:
    """The hidden-unit (fan-out) map; c_proj takes `.fan_in(split)`."""
    src_hidden = mlp_hidden(src_width, src_ratio)
    widened = mlp_hidden(dst_width, src_ratio)
    return IndexMap.concat([IndexMap.tile(src_hidden, widened),
                            IndexMap.new(mlp_hidden(dst_width, dst_ratio) - widened)])
