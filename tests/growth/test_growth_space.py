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


def test_compound_move_applies_in_order():
    src = tiny_arch()
    dst = Moves.parse("vision.layers+=2,text.width*=2,text.mlp_ratio=6,shared.layers=1,shared.width=64").apply(src)
    assert (dst.vision.layers, dst.text.width, dst.text.heads, dst.text.mlp_ratio) == (4, 64, 2, 6.0)
    assert (dst.shared.layers, dst.shared.width) == (1, 64)


def test_heads_move_keeps_head_dim():
    dst = Moves.parse("text.heads*=2").apply(tiny_arch())
    assert (dst.text.heads, dst.text.width) == (4, 64)
    dst = Moves.parse("vision.heads+=1").apply(tiny_arch())
    assert (dst.vision.heads, dst.vision.width) == (3, 48)


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


def test_more_heads_at_the_same_width_is_refused():
    """Only reachable with --to ARCH.yaml: the heads move itself widens the tower."""
    src = tiny_arch()
    dst = src.replace(text=dataclasses.replace(src.text, heads=4))
    with pytest.raises(GrowthError, match="text head_dim shrinks 16 -> 8"):
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
