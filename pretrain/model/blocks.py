"""Pre-LN transformer blocks with OpenCLIP's parameter names (attn.in_proj_weight, mlp.c_fc, ...)."""
import torch
from torch import nn

from ..arch import mlp_hidden
from .attention import attention


class QKVProjection(nn.Module):
    """x @ in_proj_weightᵀ + in_proj_bias. It owns no weights: they stay on the attention module under
    OpenCLIP's names, and tensor parallelism swaps this module for a column-parallel one."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, weight, bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection laid out [q; k; v] like nn.MultiheadAttention.
    The inner dim is heads·head_dim (the width, unless the architecture sets head_dim). The number of heads is
    read off the projection's output, so a tensor-parallel shard runs its own heads."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        inner = heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        self.in_proj = QKVProjection()
        self.out_proj = nn.Linear(inner, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.in_proj(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, head_dim: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, head_dim)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, hidden)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of blocks of one tower `t` (its width, heads, head_dim, MLP); `resblocks.{i}` matches OpenCLIP."""

    def __init__(self, t):
        super().__init__()
        width, layers = t.width, t.layers
        hidden = mlp_hidden(width, t.mlp_ratio)
        self.resblocks = nn.ModuleList([ResidualBlock(width, t.heads, hidden, t.attn_head_dim)
                                        for _ in range(layers)])
        init_blocks(self.resblocks, width, layers)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x


def init_blocks(blocks, width: int, layers: int) -> None:
    """OpenCLIP's text-tower initialisation, used for every stack (depth-scaled residual projections)."""
    proj_std = (width ** -0.5) * ((2 * max(layers, 1)) ** -0.5)
    attn_std = width ** -0.5
    fc_std = (2 * width) ** -0.5
    for block in blocks:
        nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
