"""The growth space: move syntax, target architectures, and the checks that refuse non-growth and bad layouts."""
import dataclasses

import pytest

from growth.errors import GrowthError
from growth.space import Move, Moves, check_growth, target_architecture, validate_layout
from pretrain.parallel.layout import Layout
from tests.growth.helpers import tiny_arch


def test_move_parses_and_prints():
    move = Move.parse(" vision.layers += 2 ")
    assert (move.tower, move.field, move.op, move.value) == ("vision", "layers", "+=", 2)
    assert str(Moves.parse("vision.layers+=2,text.width*=2,shared.layers=1")) == \
        "vision.layers+=2,text.width*=2,shared.layers=1"


def test_depth_can_be_multiplied():
    """`layers*=2` stacks a tower (growth/operators.py stacked: each block doubled in place)."""
    src = tiny_arch()
    dst = Moves.parse("vision.layers*=2,text.layers*=2").apply(src)
    assert (dst.vision.layers, dst.text.layers) == (4, 4) and check_growth(src, dst) == []
    assert str(Moves.parse("text.layers*=2")) == "text.layers*=2"
    shared = tiny_arch(shared_layers=1)
    assert Moves.parse("shared.layers*=3").apply(shared).shared.layers == 3


def test_compound_move_applies_in_order():
    src = tiny_arch()
    dst = Moves.parse("vision.layers+=2,text.width*=2,text.mlp_ratio=6,shared.layers=1,shared.width=64").apply(src)
    assert (dst.vision.layers, dst.text.width, dst.text.heads, dst.text.mlp_ratio) == (4, 64, 2, 6.0)
    assert (dst.shared.layers, dst.shared.width) == (1, 64)


def test_heads_move_keeps_width_and_head_dim():
    dst = Moves.parse("text.heads*=2").apply(tiny_arch())
    assert (dst.text.heads, dst.text.width, dst.text.head_dim, dst.text.attn_width) == (4, 32, 16, 64)
    dst = Moves.parse("vision.heads+=1").apply(tiny_arch())
    assert (dst.vision.heads, dst.vision.width, dst.vision.attn_width) == (3, 32, 48)
    assert check_growth(tiny_arch(), dst) == []


def test_width_move_keeps_an_explicit_head_dim_and_widens_a_tied_one():
    src = tiny_arch()
    tied = Moves.parse("text.width*=2").apply(src)
    assert (tied.text.head_dim, tied.text.attn_head_dim, tied.text.attn_width) == (None, 32, 64)
    explicit = Moves.parse("text.heads*=2,text.width*=4").apply(src)
    assert (explicit.text.head_dim, explicit.text.attn_width, explicit.text.width) == (16, 64, 128)
    stepwise = Moves.parse("text.heads*=2,text.width*=2,text.width*=2").apply(src)  # 64 = 4 x 16 on the way
    assert stepwise == explicit


def test_head_dim_move_and_round_trip_through_a_target_architecture():
    src = tiny_arch()
    dst = Moves.parse("vision.head_dim*=2").apply(src)
    assert (dst.vision.head_dim, dst.vision.attn_width, dst.vision.width) == (32, 64, 32)
    arch, text = target_architecture(src, dst)
    assert text == "vision.head_dim=32" and Moves.parse(text).apply(src) == dst
    dst = src.replace(text=dataclasses.replace(src.text, width=99, heads=3, head_dim=33))
    arch, text = target_architecture(src, dst)
    assert text == "text.heads=3,text.head_dim=33,text.width=99" and Moves.parse(text).apply(src) == dst


def test_target_from_architecture_records_assignments():
    src = tiny_arch()
    dst = Moves.parse("vision.layers+=1,text.width*=2").apply(src)
    arch, text = target_architecture(src, dst)
    assert arch == dst and text == "vision.layers=3,text.width=64"


@pytest.mark.parametrize("text, message", [
    ("vision.layers", "must look like"), ("audio.layers+=1", "unknown tower"), ("vision.depth+=1", "unknown field"),
    ("vision.layers*=1.25", "not an integer"), ("text.width=33", "not divisible by text.heads"), ("", "empty move"),
])
def test_bad_move_text(text, message):
    with pytest.raises(GrowthError, match=message):
        Moves.parse(text).apply(tiny_arch())


@pytest.mark.parametrize("move, message", [
    ("vision.layers=1", "vision.layers shrinks 2 -> 1"), ("text.width=16", "text.width shrinks"),
    ("vision.mlp_ratio=2", "vision.mlp_ratio shrinks"),
    ("shared.layers=1,shared.width=16", "shared.width 16 is smaller than the vision features"),
])
def test_shrinking_target_is_refused(move, message):
    src = tiny_arch()
    with pytest.raises(GrowthError, match=message):
        check_growth(src, Moves.parse(move).apply(src))


def test_narrower_heads_are_refused():
    """Only reachable with --to ARCH.yaml: more heads in the same inner dim would cut every old head."""
    src = tiny_arch()
    dst = src.replace(text=dataclasses.replace(src.text, heads=4))
    with pytest.raises(GrowthError, match="text.head_dim shrinks 16 -> 8"):
        check_growth(src, dst)


def test_fixed_fields_are_not_growable():
    src = tiny_arch()
    dst = src.replace(text=dataclasses.replace(src.text, vocab=128))
    with pytest.raises(GrowthError, match="text.vocab 64 -> 128 is not part of the growth space"):
        check_growth(src, dst)


def test_dropping_a_trained_adapter_is_refused():
    src = tiny_arch(shared_layers=1, shared_width=64)  # both towers have adapters 32 -> 64
    with pytest.raises(GrowthError, match="adapter that would be dropped"):
        check_growth(src, Moves.parse("vision.width*=2").apply(src))


def test_non_integer_width_is_flagged_approximate():
    src = tiny_arch()
    notes = check_growth(src, Moves.parse("vision.width*=1.5").apply(src))
    assert len(notes) == 1 and "vision.width 32 -> 48" in notes[0] and "approximate" in notes[0]
    assert check_growth(src, Moves.parse("vision.width*=2").apply(src)) == []


def test_target_invalid_for_layout():
    dst = Moves.parse("vision.layers+=1").apply(tiny_arch())
    with pytest.raises(GrowthError, match=r"vision.heads=2 is not divisible by tp=3"):
        validate_layout(dst, Layout(tp=3))
    with pytest.raises(GrowthError, match=r"text.layers=2 is fewer than pp=3"):
        validate_layout(dst, Layout(pp=3))
    validate_layout(dst, Layout(tp=2, pp=2))
