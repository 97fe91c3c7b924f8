"""The pipeline partition: layout-independent layer order, both towers on every stage, FLOPs balance."""
import pytest

from pretrain.arch import Architecture, SharedEncoder
from pretrain.parallel.pipeline_plan import describe, imbalance, layer_order, partition, stage_flops

B16 = Architecture.load("configs/models/vit-b-16.yaml")


def test_vit_b16_text_b_at_pp4_is_balanced_within_15_percent():
    layers = layer_order(B16)
    flops = stage_flops(layers, partition(layers, 4))
    assert imbalance(flops) <= 0.15, flops
    assert "imbalance" in describe(B16, 4)


@pytest.mark.parametrize("pp", [2, 3, 4])
def test_every_stage_holds_contiguous_slices_of_both_towers(pp):
    arch = B16.replace(shared=SharedEncoder(layers=2, width=640, heads=10))
    layers = layer_order(arch)
    parts = partition(layers, pp)
    seen = {"vision": [], "text": []}
    for a, b in zip(parts, parts[1:]):
        for kind in seen:
            idx = [x.index for x in layers[a:b] if x.kind == kind]
            assert idx, (pp, kind)  # no stage idles while the other tower runs
            assert idx == list(range(idx[0], idx[-1] + 1))
            seen[kind] += idx
    assert seen == {"vision": list(range(12)), "text": list(range(12))}
    last = layers[parts[-2]:]
    shared = [x.kind for x in layers if x.kind.startswith("shared")]
    assert shared == [x.kind for x in last if x.kind.startswith("shared")]


def test_layer_order_depends_on_the_architecture_only():
    assert layer_order(B16) == layer_order(Architecture.load("configs/models/vit-b-16.yaml"))
    assert sum(x.flops for x in layer_order(B16)) == pytest.approx(B16.flops_per_sample())
