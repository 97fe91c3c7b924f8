"""Tiny single-device models, a fixed batch and their outputs, for the in-process growth tests."""
import torch
import torch.nn.functional as F

from pretrain.arch import Architecture, SharedEncoder, TextTower, VisionTower
from pretrain.loss import clip_loss_torch
from pretrain.model import CLIP

TOL = 1e-5  # function preservation: embeddings and loss, absolute, fp32


def tiny_arch(shared_layers: int = 0, shared_width: int = 32) -> Architecture:
    return Architecture(vision=VisionTower(layers=2, width=32, heads=2, mlp_ratio=4.0, patch=7, image_size=28),
                        text=TextTower(layers=2, width=32, heads=2, mlp_ratio=4.0, vocab=64, context=8),
                        shared=SharedEncoder(layers=shared_layers, width=shared_width, heads=2, mlp_ratio=4.0),
                        embed_dim=16)


def random_model(arch: Architecture, seed: int = 0) -> CLIP:
    """A CLIP whose every weight (LayerNorm gains and biases included) is perturbed, so no map is trivially
    exact because a tensor is all ones or zeros."""
    torch.manual_seed(seed)
    model = CLIP(arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def fixed_batch(arch: Architecture, n: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, arch.vision.image_size, arch.vision.image_size, generator=g)
    texts = torch.randint(1, arch.text.vocab - 2, (n, arch.text.context), generator=g)
    texts[:, 5] = arch.text.vocab - 1  # end of text: the largest id, pooled by argmax
    texts[:, 6:] = 0
    return images, texts


def loss_of(model: CLIP, batch) -> torch.Tensor:
    image, text, scale = model(*batch)
    return clip_loss_torch(image, text, image, text, scale)


@torch.no_grad()
def outputs(model: CLIP, batch) -> dict[str, torch.Tensor]:
    images, texts = batch
    return {"image": model.encode_image(images), "text": model.encode_text(texts), "loss": loss_of(model, batch)}


def load(arch: Architecture, weights: dict[str, torch.Tensor]) -> CLIP:
    model = CLIP(arch)
    model.load_state_dict(weights, strict=True)
    return model


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def normalize(x):
    return F.normalize(x, dim=-1)
