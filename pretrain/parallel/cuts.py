"""The one table of tensor-parallel cuts, and the two functions that apply it, free of megatron-core so that
checkpoints, growth and eval can read it without importing it. `tensor.py` swaps in the layers that compute
with these pieces.

Cuts: QKV and MLP-in are column-parallel (heads and hidden units split), attention-out and MLP-out are
row-parallel (their biases replicated), the token embedding is vocab-parallel (rows padded to a multiple of
tp). Everything else is replicated.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from .layout import padded_vocab

SPLITS = (  # canonical parameter name pattern -> cut
    (r"(^|\.)attn\.in_proj_(weight|bias)$", "qkv"),
    (r"(^|\.)attn\.out_proj\.weight$", "row"),
    (r"(^|\.)mlp\.c_fc\.(weight|bias)$", "column"),
    (r"(^|\.)mlp\.c_proj\.weight$", "row"),
    (r"^token_embedding\.weight$", "vocab"),
)


def split_of(name: str) -> str:
    return next((cut for pattern, cut in SPLITS if re.search(pattern, name)), "replicated")


def shard(full: torch.Tensor, cut: str, rank: int, size: int) -> torch.Tensor:
    """This rank's piece of a full tensor."""
    if cut == "replicated":
        return full.clone()
    if cut == "vocab":
        pad = padded_vocab(full.shape[0], size) - full.shape[0]
        full = nn.functional.pad(full, (0, 0, 0, pad))
        return full.chunk(size, dim=0)[rank].clone()
    if cut == "column":
        return full.chunk(size, dim=0)[rank].clone()
    if cut == "row":
        return full.chunk(size, dim=1)[rank].clone()
    if cut == "qkv":  # [q; k; v] -> [q_r; k_r; v_r]: each rank keeps its heads of each of the three
        return full.reshape(3, -1, *full.shape[1:]).chunk(size, dim=1)[rank].reshape(-1, *full.shape[1:]).clone()
    raise ValueError(f"unknown cut {cut!r}")


def unshard(pieces: list[torch.Tensor], cut: str, vocab: int | None = None) -> torch.Tensor:
    """The full tensor from all ranks' pieces (inverse of `shard`)."""
    if cut == "replicated":
        return pieces[0]
    if cut == "vocab":
        return torch.cat(pieces, dim=0)[:vocab]
    if cut == "column":
        return torch.cat(pieces, dim=0)
    if cut == "row":
        return torch.cat(pieces, dim=1)
    if cut == "qkv":
        rest = pieces[0].shape[1:]
        return torch.cat([p.reshape(3, -1, *rest) for p in pieces], dim=1).reshape(-1, *rest)
    raise ValueError(f"unknown cut {cut!r}")
