"""The image tower (ViT), the text tower (causal transformer) and the shared encoder, in OpenCLIP's names.

The vision tower is split into `embed` (pixels -> tokens), its blocks and `pool`, so pipeline stages can be built
from the same modules. OpenCLIP keeps the text tower at the top level of CLIP, so clip.py holds it.
"""
import torch
from torch import nn

from ..arch import Architecture
from .blocks import Transformer


class VisionTower(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        v = arch.vision
        scale = v.width ** -0.5
        self.conv1 = nn.Conv2d(3, v.width, kernel_size=v.patch, stride=v.patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(v.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(v.tokens, v.width))
        self.ln_pre = nn.LayerNorm(v.width)
        self.transformer = Transformer(v)
        out = arch.vision_out_width
        self.ln_post = nn.LayerNorm(out)
        self.proj = nn.Parameter((out ** -0.5) * torch.randn(out, arch.embed_dim))

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).transpose(1, 2)  # [b, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln_post(x)[:, 0] @ self.proj


class SharedEncoder(nn.Module):
    """GrowCLIP's shared encoder: ONE stack of blocks run on each modality after its tower.
    A tower whose width differs from shared.width enters through its own linear adapter."""

    def __init__(self, arch: Architecture):
        super().__init__()
        s = arch.shared
        self.transformer = Transformer(s)
        self.adapter_visual = nn.Linear(arch.vision.width, s.width) if arch.vision.width != s.width else None
        self.adapter_text = nn.Linear(arch.text.width, s.width) if arch.text.width != s.width else None

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        return self.transformer(self.adapt(x, modality), causal=(modality == "text"))

    def adapt(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """A tower's tokens into the shared width: its adapter, or the identity where it has none."""
        adapter = getattr(self, "adapter_visual" if modality == "image" else "adapter_text", None)
        return x if adapter is None else adapter(x)
