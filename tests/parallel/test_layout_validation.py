"""Every invalid layout stops with an error that names the numbers, before any rank does work."""
import pytest

from pretrain.arch import Architecture
from pretrain.parallel.layout import Layout, LayoutError, padded_vocab
from tests.conftest import launch

TINY = Architecture.load("configs/models/tiny.yaml")


@pytest.mark.parametrize("world, tp, pp, zero, arch_change, message", [
    (3, 2, 1, 1, {}, "world size 3 is not divisible by tp*pp = 2*1 = 2"),
    (8, 8, 1, 1, {}, "vision.heads=4 is not divisible by tp=8"),
    (2, 2, 1, 1, {"vision": {"width": 126, "heads": 2, "mlp_ratio": 2.5}},
     "vision MLP hidden 315 (width 126 x mlp_ratio 2.5) is not divisible by tp=2"),
    (2, 1, 2, 1, {"text": {"layers": 1}}, "text.layers=1 is fewer than pp=2 pipeline stages"),
    (2, 1, 2, 2, {}, "ZeRO stage 2 with pp=2: DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only"),
    (4, 1, 2, 3, {}, "ZeRO stage 3 with pp=2"),
    (2, 0, 1, 1, {}, "tp=0 and pp=1 must be >= 1"),
])
def test_invalid_layouts_name_the_numbers(world, tp, pp, zero, arch_change, message):
    d = TINY.to_dict()
    for key, sub in arch_change.items():
        d[key].update(sub)
    with pytest.raises(LayoutError, match=message.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
        Layout.for_world(world, tp, pp).validate(Architecture.from_dict(d), zero)


def test_vocab_is_padded_to_a_multiple_of_tp():
    assert padded_vocab(4095, 2) == 4096 and padded_vocab(4096, 4) == 4096 and padded_vocab(5, 4) == 8


@pytest.mark.slow
def test_invalid_layout_stops_the_launch_before_training(tiny_data, tmp_path):
    proc = launch(tmp_path, tiny_data, "train.steps=2", ds_config="ds_configs/zero2.json",
                  extra_args=("--pp", "2"), check=False)
    assert proc.returncode != 0
    assert "ZeRO stage 2 with pp=2" in proc.stderr + proc.stdout
    assert not (tmp_path / "metrics.jsonl").exists()
