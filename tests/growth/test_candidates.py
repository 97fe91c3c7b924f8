"""The dynamic growth space (growth/candidates.py): a pure function of (architecture, g, budget, layout) that
widens with g, keeps to the budget and the layout, and offers shared-encoder and compound moves."""
import math

import pytest

from growth.candidates import Budget, generate, memory_gb, place, select, single_moves
from growth.space import Moves
from pretrain.arch import Architecture
from pretrain.parallel.layout import Layout

TINY = Architecture.from_dict({
    "vision": {"layers": 4, "width": 128, "heads": 4, "patch": 7, "image_size": 28},
    "text": {"layers": 4, "width": 128, "heads": 4, "vocab": 4096, "context": 24},
    "shared": {"layers": 0, "width": 128, "heads": 4}, "embed_dim": 128})


def moves(cands):
    return {c.moves for c in cands}


def test_the_space_widens_with_the_data_growth_ratio():
    """Every move at a small g is still offered at a larger g, and the larger g adds bigger moves of every
    tower dimension (depth +3 instead of +1 for 4 layers when the data doubles)."""
    small, large = set(single_moves(TINY, 1.1)), set(single_moves(TINY, 2.0))
    assert small < large
    for move in ("vision.layers+=4", "text.layers+=4", "vision.heads+=4", "text.mlp_ratio+=4"):
        assert move in large and move not in small
    assert max(int(m.split("+=")[1]) for m in small if m.startswith("vision.layers+=")) == 1
    loose = Budget()
    assert len(generate(TINY, 2.0, loose, Layout())[0]) > len(generate(TINY, 1.1, loose, Layout())[0])


def test_every_dimension_the_shared_encoder_and_compound_moves_are_offered():
    kept, _ = generate(TINY, 1.5, Budget(), Layout())
    families = {c.family for c in kept}
    for tower in ("vision", "text"):
        assert {f"{tower}.layers", f"{tower}.width", f"{tower}.heads", f"{tower}.mlp_ratio"} <= families
    assert "shared" in families
    assert any("+" in f for f in families) and any("shared+" in f for f in families)
    shared = next(c for c in kept if c.family == "shared")
    assert shared.arch.shared.layers == 1 and shared.arch.shared.width == 128
    deeper = generate(shared.arch, 1.5, Budget(), Layout())[0]
    assert "shared.layers+=1" in moves(deeper)  # once there is a shared encoder, it deepens


def test_the_budget_is_kept_and_rejections_say_why():
    base = TINY.flops_per_sample() / 1e9
    params = 2_500_000
    kept, rejected = generate(TINY, 2.0, Budget(max_gflops=base * 1.3, max_params=params), Layout())
    assert kept and rejected
    assert all(c.gflops <= base * 1.3 and c.params <= params for c in kept)
    reasons = " ".join(r["reason"] for r in rejected)
    assert "GFLOPs/sample > budget" in reasons and "parameters > budget" in reasons
    assert generate(TINY, 2.0, Budget(max_gflops=base), Layout())[0] == []  # nothing grows for free


def test_a_candidate_keeps_the_layout_or_moves_to_the_smallest_that_holds_it():
    """At (tp, pp, dp) = (2, 1, 1), 4 heads + 1 is not divisible by tp: that candidate moves to (1, 1, 2); those
    that fit stay at tp = 2. A memory budget too small for tp = 1 pushes a candidate to tp = 2."""
    kept, _ = generate(TINY, 1.1, Budget(), Layout(2, 1, 1))
    by_move = {c.moves: (c.tp, c.pp) for c in kept}
    assert by_move["vision.heads+=1"] == (1, 1)
    assert by_move["vision.layers+=1"] == (2, 1)
    arch = Moves.parse("vision.layers+=1").apply(TINY)
    budget = Budget(max_mem_gb=(memory_gb(arch, Layout(1, 1, 2), Budget()) + memory_gb(arch, Layout(2, 1, 1),
                                                                                        Budget())) / 2)
    lay, why = place(arch, Layout(1, 1, 2), budget)
    assert (lay.tp, lay.pp) == (2, 1) and why == ""
    lay, why = place(arch, Layout(1, 1, 2), Budget(max_mem_gb=1e-6))
    assert lay is None and "no layout of 2 ranks holds it" in why


def test_pipeline_layouts_need_as_many_layers_as_stages():
    two = TINY.replace(vision=TINY.vision.__class__(**{**TINY.vision.__dict__, "layers": 2}))
    lay, _ = place(two, Layout(1, 4, 1), Budget(zero_stage=1))
    assert (lay.tp, lay.pp, lay.dp) == (1, 1, 4)  # 2 vision layers cannot span 4 stages: the smallest layout
    assert place(TINY, Layout(1, 4, 1), Budget(zero_stage=1))[0] == Layout(1, 4, 1)  # 4 layers can: kept


def test_generation_is_pure_and_selection_covers_the_dimensions_first():
    a = generate(TINY, 1.8, Budget(), Layout())
    b = generate(TINY, 1.8, Budget(), Layout())
    assert a == b
    chosen = select(a[0], 9, 1.8, TINY)
    assert len(chosen) == 9 and len({c.family for c in chosen}) == 9  # one per group before any repeats
    assert select(a[0], 9, 1.8, TINY) == chosen
    assert select(a[0], 0, 1.8, TINY) == a[0]


@pytest.mark.parametrize("g", [1.0, 1.05, 3.7])
def test_every_candidate_is_a_valid_growth(g):
    from growth.space import check_growth
    for c in generate(TINY, g, Budget(), Layout())[0]:
        check_growth(TINY, c.arch)
        assert math.isclose(c.gflops, c.arch.flops_per_sample() / 1e9)


def test_a_kernel_head_dim_limit_rejects_wider_heads():
    """With the Triton kernel's limit (here 32, TINY's head_dim), widening a tower with tied heads widens its
    heads past it and is rejected; adding heads keeps head_dim and stays."""
    kept, rejected = generate(TINY, 2.0, Budget(max_head_dim=32), Layout())
    assert "vision.width*=2" not in moves(kept) and "vision.heads+=1" in moves(kept)
    assert any(r["move"] == "vision.width*=2" and "head_dim" in r["reason"] for r in rejected)


def test_one_growth_can_reach_several_times_the_flops():
    """Depth x2 by stacking and width x2, per tower and compound, are in the space even when the data grew little:
    one step can propose a 4x (and an 8x) FLOPs growth when the budget allows it, and never the same architecture
    twice."""
    kept, _ = generate(TINY, 1.1, Budget(), Layout())
    base = TINY.flops_per_sample()
    ratios = {c.moves: c.arch.flops_per_sample() / base for c in kept}
    for move in ("vision.layers*=2", "text.layers*=2", "vision.width*=2", "text.width*=2",
                 "vision.layers*=2,text.layers*=2", "vision.width*=2,text.width*=2"):
        assert move in ratios, move
    assert max(ratios.values()) > 7 and any(3.5 <= r <= 4.5 for r in ratios.values())
    assert len({repr(c.arch.to_dict()) for c in kept}) == len(kept)
    capped = generate(TINY, 1.1, Budget(max_gflops=base * 4.2 / 1e9), Layout())[0]
    assert max(c.gflops * 1e9 / base for c in capped) <= 4.2


def test_the_candidates_trained_are_those_closest_to_the_compute_target():
    """select() aims at growth.target_ratio, not at g: with data grown by 10% and a target of 4x, the three
    candidates are the ones whose FLOPs ratio is closest to 4 (each of another family); a target of 2 picks others."""
    kept, _ = generate(TINY, 1.1, Budget(), Layout())
    base = TINY.flops_per_sample() / 1e9
    chosen = select(kept, 3, 4.0, TINY)
    distance = sorted(abs(math.log(c.gflops / base) - math.log(4.0)) for c in kept)
    assert len(chosen) == 3 and len({c.family for c in chosen}) == 3
    assert all(abs(math.log(c.gflops / base) - math.log(4.0)) <= distance[8] for c in chosen)
    assert all(c.gflops / base > 2.5 for c in chosen)
    assert {c.moves for c in select(kept, 3, 2.0, TINY)} != {c.moves for c in chosen}
