"""The index-map abstraction and the per-dimension operators built on it."""
import math

import pytest
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


def test_split_fractions_follow_the_documented_scheme():
    """Copy r of k gets (1 + s·c_r)/k, c_r = (2r − (k−1))/(k−1): k = 2, s = 0.5 gives 0.25 and 0.75, in target
    order; the shares of every source sum to 1; k = 1 and new indices keep 1; s = 0 is plain tiling exactly."""
    assert IndexMap.tile(2, 4).fan_in(0.5).scale.tolist() == [0.25, 0.25, 0.75, 0.75]
    three = IndexMap.tile(2, 6).fractions(0.5)  # k = 3: c = -1, 0, 1
    assert torch.allclose(three, torch.tensor([0.5, 0.5, 1, 1, 1.5, 1.5], dtype=torch.float64) / 3)
    odd = IndexMap.concat([IndexMap.tile(3, 5), IndexMap.new(2)])  # sources 0, 1 twice, 2 once, two new
    assert odd.copy_rank().tolist() == [0, 0, 0, 1, 1, 0, 0]
    assert odd.fan_in(0.5).scale.tolist() == [0.25, 0.25, 1, 0.75, 0.75, 1, 1]
    shuffled = IndexMap(torch.tensor([1, 0, 1, 0, 1]), torch.ones(5, dtype=torch.float64), 2)
    assert shuffled.copy_rank().tolist() == [0, 0, 1, 1, 2]
    for m in (IndexMap.tile(3, 7), IndexMap.tile(5, 20), odd, shuffled):
        for s in (0.0, 0.3, 0.5, 0.9):
            f = m.fractions(s)
            old = m.src != NEW
            sums = torch.zeros(m.source_size, dtype=torch.float64).index_add_(0, m.src[old], f[old])
            assert torch.allclose(sums, torch.ones(m.source_size, dtype=torch.float64)), (m.src, s)
            assert (f > 0).all()
        assert torch.equal(m.fan_in(0.0).scale, m.scale / m.copies())  # today's tiling, bit for bit
        assert torch.equal(m.fan_in(0.0).scale, m.scale * m.fractions(0.0))
    with pytest.raises(ValueError, match="split"):
        IndexMap.tile(2, 4).fan_in(1.0)


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


def test_stacking_copies_the_block_each_new_one_follows():
    assert op.stacked(2, 4) == [0, 0, 1, 1]  # x2: each block doubled in place
    assert op.stacked(4, 6) == [0, 1, 1, 2, 3, 3]
    assert op.stacked(2, 3) == [0, 1, 1]
    assert op.stacked(3, 3) == [0, 1, 2]
    assert op.stacked(0, 2) == [None, None]  # nothing to copy: fresh


@pytest.mark.parametrize("split", [0.0, 0.5])
def test_attention_map_preserves_scaled_dot_products_for_any_head_dim_factor(split):
    """head_dim 4 -> 6 (not an integer factor): q'.k'/sqrt(6) == q.k/sqrt(4) per head, also when the copies of a
    query dim share it unequally (keys tiled: sum_r frac_r·q·k = q·k)."""
    heads, d, d2 = 2, 4, 6
    qkv, out_cols = op.attention(heads, d, heads, d2, split)
    q, k = torch.randn(heads * d), torch.randn(heads * d)
    src = torch.cat([q, k, torch.zeros(heads * d)])
    grown = TensorMap("b", (qkv,)).weights(src, torch.zeros(3 * heads * d2))
    q2, k2 = grown[:heads * d2].view(heads, d2), grown[heads * d2: 2 * heads * d2].view(heads, d2)
    before = (q.view(heads, d) * k.view(heads, d)).sum(-1) / math.sqrt(d)
    assert torch.allclose((q2 * k2).sum(-1) / math.sqrt(d2), before, atol=1e-6)
    assert out_cols.size == heads * d2
    assert torch.equal(k2, k.view(heads, d)[:, [0, 1, 2, 3, 0, 1]])  # keys are tiled
    if split:  # head dims 0 and 1 are copied twice: out-projection shares 0.25 and 0.75, queries the same
        assert out_cols.scale.view(heads, d2)[0].tolist() == [0.25, 0.25, 1, 1, 0.75, 0.75]
        assert torch.allclose(q2[:, 4:] / q2[:, :2].clone().mul_(3), torch.ones(heads, 2), atol=1e-6)


def test_attention_and_mlp_new_units():
    qkv, out_cols = op.attention(2, 4, 4, 4)  # heads 2 -> 4 at head_dim 4
    assert (qkv.src[:8] >= 0).all() and (qkv.src[8:16] == NEW).all() and (out_cols.src[8:] == NEW).all()
    hidden = op.mlp(8, 4.0, 8, 6.0)
    assert hidden.src.tolist() == list(range(32)) + [NEW] * 16
    hidden = op.mlp(8, 4.0, 16, 4.0)  # widened: duplicated like the residual
    assert hidden.src.tolist() == list(range(32)) * 2
