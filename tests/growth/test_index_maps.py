"""The index-map abstraction and the per-dimension operators built on it."""
import math

import torch

from growth import operators as op
from growth.index_map import NEW, Identity, IndexMap, TensorMap


def test_tile_extend_concat_and_copies():
    tile = IndexMap.tile(3, 7)
    assert tile.src.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert tile.copies().tolist() == [3, 2, 2, 3, 2, 2, 3]
    assert tile.fan_in().scale.tolist() == [1 / c for c in [3, 2, 2, 3, 2, 2, 3]]
    ext = IndexMap.concat([IndexMap.identity(2), IndexMap.new(2)])
    assert ext.src.tolist() == [0, 1, NEW, NEW] and ext.copies().tolist() == [1, 1, 1, 1]
    cat = IndexMap.concat([IndexMap.identity(2), IndexMap.new(1), IndexMap.tile(2, 4)])
    assert cat.src.tolist() == [0, 1, NEW, 2, 3, 2, 3] and cat.source_size == 4
    assert IndexMap.identity(5).is_identity() and not IndexMap.tile(5, 5).scaled(2.0).is_identity()


def test_tensor_map_weights_and_moments():
    src = torch.arange(6.0).view(2, 3)
    init = torch.full((3, 4), -1.0)
    tmap = TensorMap("w", (IndexMap.concat([IndexMap.identity(2), IndexMap.new(1)]), IndexMap.tile(3, 4).fan_in()))
    w = tmap.weights(src, init)
    assert torch.equal(w, torch.tensor([[0 / 2, 1, 2, 0 / 2], [3 / 2, 4, 5, 3 / 2], [-1, -1, -1, -1]]))
    assert torch.equal(TensorMap("w", tmap.dims, "zero").weights(src, init)[2], torch.zeros(4))
    sq = tmap.moment(src, 2, init)
    assert torch.equal(sq[:2, 0], src[:, 0] / 4) and torch.equal(sq[2], torch.zeros(4))
    assert torch.equal(tmap.moment(None, 1, init), torch.zeros(3, 4))
    eye = TensorMap(Identity(2), (IndexMap.tile(2, 4), IndexMap.identity(2))).weights(None, torch.zeros(4, 2))
    assert torch.equal(eye, torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]]))


def test_identity_map_returns_a_copy():
    src = torch.randn(3)
    out = TensorMap("w", (IndexMap.identity(3),)).weights(src, torch.zeros(3))
    assert torch.equal(out, src) and out.data_ptr() != src.data_ptr()


def test_depth_spreads_new_blocks():
    assert op.depth(2, 4) == [0, None, 1, None]
    assert op.depth(4, 6) == [0, 1, None, 2, 3, None]
    assert op.depth(3, 3) == [0, 1, 2]
    assert op.depth(0, 2) == [None, None]


def test_attention_map_preserves_scaled_dot_products_for_any_head_dim_factor():
    """head_dim 4 -> 6 (not an integer factor): q'.k'/sqrt(6) == q.k/sqrt(4) per head."""
    heads, d, d2 = 2, 4, 6
    qkv, out_cols = op.attention(heads, d, heads, d2)
    q, k = torch.randn(heads * d), torch.randn(heads * d)
    src = torch.cat([q, k, torch.zeros(heads * d)])
    grown = TensorMap("b", (qkv,)).weights(src, torch.zeros(3 * heads * d2))
    q2, k2 = grown[:heads * d2].view(heads, d2), grown[heads * d2: 2 * heads * d2].view(heads, d2)
    before = (q.view(heads, d) * k.view(heads, d)).sum(-1) / math.sqrt(d)
    assert torch.allclose((q2 * k2).sum(-1) / math.sqrt(d2), before, atol=1e-6)
    assert out_cols.size == heads * d2


def test_attention_and_mlp_new_units():
    qkv, out_cols = op.attention(2, 4, 4, 4)  # heads 2 -> 4 at head_dim 4
    assert (qkv.src[:8] >= 0).all() and (qkv.src[8:16] == NEW).all() and (out_cols.src[8:] == NEW).all()
    hidden = op.mlp(8, 4.0, 8, 6.0)
    assert hidden.src.tolist() == list(range(32)) + [NEW] * 16
    hidden = op.mlp(8, 4.0, 16, 4.0)  # widened: duplicated like the residual
    assert hidden.src.tolist() == list(range(32)) * 2
