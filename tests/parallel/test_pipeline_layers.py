"""The pipeline's layers, run one after another in one process, compute exactly what CLIP.forward computes, for
plain CLIP and for a shared encoder entered through both adapters (the launches in test_layouts use plain CLIP)."""
import dataclasses

import pytest
import torch

from pretrain.arch import Architecture, SharedEncoder
from pretrain.model import CLIP
from pretrain.parallel.pipeline import build_layers

TINY = Architecture.load("configs/models/tiny.yaml")
ARCHS = {"plain": TINY,
         "shared+adapters": TINY.replace(shared=SharedEncoder(layers=2, width=192, heads=4)),
         "shared, decoupled heads": TINY.replace(shared=SharedEncoder(layers=1, width=128, heads=8, head_dim=32),
                                                 text=dataclasses.replace(TINY.text, heads=8, head_dim=32))}


@pytest.mark.parametrize("name", list(ARCHS))
def test_layers_in_order_equal_the_model(name):
    arch = ARCHS[name]
    torch.manual_seed(0)
    model = CLIP(arch).eval()
    image = torch.randn(3, 3, arch.vision.image_size, arch.vision.image_size)
    text = torch.randint(1, arch.text.vocab - 1, (3, arch.text.context))
    text[:, 6] = arch.text.vocab - 1
    with torch.no_grad():
        expected = model(image, text)
        x = (image, text)
        for layer in build_layers(model):
            x = layer(x)
    kinds = [type(layer).__name__ for layer in build_layers(model)]
    assert ("SharedAdapters" in kinds) == (name == "shared+adapters")
    for got, want in zip(x, expected, strict=True):
        assert torch.equal(got, want)
