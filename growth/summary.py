"""The before/after table that every growth prints: parameters and forward FLOPs per sample, per part."""
from __future__ import annotations

import torch

from pretrain.arch import Architecture
from pretrain.model import CLIP


def parameter_counts(arch: Architecture) -> dict[str, int]:
    with torch.device("meta"):
        model = CLIP(arch)
    counts = {"vision": 0, "text": 0, "shared": 0}
    for name, p in model.named_parameters():
        part = "vision" if name.startswith("visual.") else "shared" if name.startswith("shared.") else "text"
        counts[part] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def table(src: Architecture, dst: Architecture) -> str:
    before, after = parameter_counts(src), parameter_counts(dst)
    rows = [(f"params {k}", before[k], after[k]) for k in before]
    rows.append(("GFLOPs/sample (fwd)", src.flops_per_sample() / 1e9, dst.flops_per_sample() / 1e9))
    lines = ["| | before | after | x |", "|---|---:|---:|---:|"]
    for label, a, b in rows:
        ratio = f"{b / a:.2f}" if a else "new" if b else "-"
        fmt = (lambda v: f"{v:.4g}") if isinstance(a, float) else (lambda v: f"{v:,}")
        lines.append(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")
    return "\n".join(lines)
