"""The tensor-parallel cut table: every parameter of a model with a decoupled attention inner dim gets a cut,
and shard/unshard are inverse for every cut and TP degree (pure tensors; the launches are in test_layouts)."""
import dataclasses

import pytest
import torch

from pretrain.arch import Architecture
from pretrain.model import CLIP
from pretrain.parallel.cuts import shard, split_of, unshard

ARCH = Architecture.load("configs/models/tiny.yaml")
ARCH = ARCH.replace(text=dataclasses.replace(ARCH.text, heads=8, head_dim=32))  # inner 256, width 128


def test_cuts_of_the_canonical_names():
    cuts = {n: split_of(n) for n, _ in CLIP(ARCH).named_parameters()}
    assert cuts["transformer.resblocks.0.attn.in_proj_weight"] == "qkv"
    assert cuts["visual.transformer.resblocks.1.attn.out_proj.weight"] == "row"
    assert cuts["transformer.resblocks.0.attn.out_proj.bias"] == "replicated"
    assert cuts["visual.transformer.resblocks.0.mlp.c_fc.bias"] == "column"
    assert cuts["token_embedding.weight"] == "vocab"
    assert cuts["logit_scale"] == cuts["visual.proj"] == "replicated"


@pytest.mark.parametrize("tp", [2, 4])
def test_shard_then_unshard_is_the_identity(tp):
    params = dict(CLIP(ARCH).named_parameters())
    for name, full in params.items():
        cut = split_of(name)
        pieces = [shard(full.detach(), cut, r, tp) for r in range(tp)]
        assert torch.equal(unshard(pieces, cut, vocab=ARCH.text.vocab), full), name
    qkv = params["transformer.resblocks.0.attn.in_proj_weight"].detach()  # [3 x 256, 128]
    piece = shard(qkv, "qkv", 1, tp)
    rows = ARCH.text.attn_width // tp  # rank 1 holds heads [8/tp, 2*8/tp) of q, of k and of v
    assert piece.shape == (3 * rows, ARCH.text.width)
    assert torch.equal(piece[rows:2 * rows], qkv[ARCH.text.attn_width + rows: ARCH.text.attn_width + 2 * rows])
