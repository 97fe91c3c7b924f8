"""GrowCLIP: an OpenCLIP-compatible dual encoder with an optional shared encoder.

Parameter names equal OpenCLIP's: `visual.*`, and the text tower at the top level (`token_embedding`,
`positional_embedding`, `transformer.*`, `ln_final`, `text_projection`), plus `logit_scale`. The shared
encoder adds `shared.*`, which OpenCLIP does not have. Pooling and projections run after the shared encoder.

One shape differs: `logit_scale` is stored as shape [1] (OpenCLIP: a 0-dim tensor), because DeepSpeed 0.19.8's
start-up broadcast views every parameter as bytes, which a 0-dim tensor cannot do. openclip.py reshapes it.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import LOG_100, Architecture
from .blocks import Transformer
from .towers import SharedEncoder, VisionTower


class CLIP(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        self.visual = VisionTower(arch)
        t = arch.text
        self.token_embedding = nn.Embedding(t.vocab, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context, t.width))
        self.transformer = Transformer(t)
        self.ln_final = nn.LayerNorm(arch.text_out_width)
        self.text_projection = nn.Parameter(
            arch.text_out_width ** -0.5 * torch.randn(arch.text_out_width, arch.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.shared = SharedEncoder(arch) if arch.shared.layers else None
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))

    # text tower pieces, named so pipeline stages can call them
    def embed_text(self, text: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(text) + self.positional_embedding

    @staticmethod
    def eot_index(text: torch.Tensor) -> torch.Tensor:
        # end-of-text is the largest token id (tokenizer contract), so argmax finds it, as in OpenCLIP
        return text.argmax(dim=-1)

    def pool_text(self, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual.transformer(self.visual.embed(image), causal=False)
        if self.shared is not None:
            x = self.shared(x, "image")
        x = self.visual.pool(x)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.transformer(self.embed_text(text), causal=True)
        if self.shared is not None:
            x = self.shared(x, "text")
        x = self.pool_text(x, self.eot_index(text))
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        return logit_scale_value(self.logit_scale)

    def forward(self, image: torch.Tensor, text: torch.Tensor):
        return self.encode_image(image, normalize=True), self.encode_text(text, normalize=True), self.scale()


def logit_scale_value(logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale), clamped at 100 (the clamp is in the forward, so it holds at every layout)."""
    return logit_scale.clamp(max=LOG_100).exp().squeeze(0)
