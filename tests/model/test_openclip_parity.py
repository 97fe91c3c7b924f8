"""Our towers equal OpenCLIP's weight for weight: embeddings match to 1e-5 in fp32, both directions."""
import dataclasses

import open_clip
import pytest
import torch

from pretrain.arch import Architecture, ArchitectureError
from pretrain.model import CLIP
from pretrain.model.openclip import export_openclip, import_openclip, to_openclip_model

TOL = 1e-5


def _inputs(arch, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, arch.vision.image_size, arch.vision.image_size, generator=g)
    text = torch.randint(1, arch.text.vocab - 1, (batch, arch.text.context), generator=g)
    text[0, 5:] = 0
    text[0, 4] = arch.text.vocab - 1  # end-of-text is the largest id
    text[1, -1] = arch.text.vocab - 1
    return image, text


def _assert_same(ours, theirs, arch):
    image, text = _inputs(arch)
    with torch.no_grad():
        for a, b in ((ours.encode_image(image), theirs.encode_image(image)),
                     (ours.encode_text(text), theirs.encode_text(text))):
            assert a.shape == b.shape
            assert (a - b).abs().max().item() <= TOL


def test_vit_b32_import():
    torch.manual_seed(0)
    oc = open_clip.create_model("ViT-B-32").eval()
    ours = import_openclip(oc.state_dict()).eval()
    assert ours.arch == Architecture.load("configs/models/vit-b-32.yaml")
    _assert_same(ours, oc, ours.arch)


def test_custom_config_import_and_export_round_trip():
    arch = Architecture.from_dict({
        "vision": {"layers": 2, "width": 96, "heads": 3, "patch": 8, "image_size": 32, "mlp_ratio": 2.0},
        "text": {"layers": 3, "width": 64, "heads": 2, "vocab": 300, "context": 16, "mlp_ratio": 3.0},
        "shared": {"layers": 0, "width": 64, "heads": 2}, "embed_dim": 48})
    torch.manual_seed(1)
    ours = CLIP(arch).eval()
    theirs = to_openclip_model(ours).eval()  # ours -> open_clip
    _assert_same(ours, theirs, arch)
    back = import_openclip(theirs.state_dict(), arch).eval()  # open_clip -> ours
    _assert_same(back, theirs, arch)
    assert all(torch.equal(v, export_openclip(back)[k]) for k, v in export_openclip(ours).items())


def test_shared_encoder_cannot_export():
    arch = Architecture.load("configs/models/tiny.yaml")
    arch = arch.replace(shared=arch.shared.__class__(layers=1, width=128, heads=4))
    with pytest.raises(ArchitectureError, match="shared encoder"):
        export_openclip(CLIP(arch))


def test_decoupled_head_dim_cannot_export():
    arch = Architecture.load("configs/models/tiny.yaml")
    arch = arch.replace(vision=dataclasses.replace(arch.vision, heads=2 * arch.vision.heads,
                                                   head_dim=arch.vision.width // arch.vision.heads))
    with pytest.raises(ArchitectureError, match="attention inner dim .* differs from vision.width"):
        export_openclip(CLIP(arch))


def test_mismatched_state_dict_is_named():
    sd = open_clip.create_model("ViT-B-32").state_dict()
    sd.pop("visual.ln_post.bias")
    with pytest.raises(ArchitectureError, match="visual.ln_post.bias"):
        import_openclip(sd)
