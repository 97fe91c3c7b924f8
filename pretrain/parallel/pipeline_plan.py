"""The pipeline's layer order and its FLOPs-balanced partition into stages (pure: no processes).

One global layer list, fixed by the architecture alone (never by the number of stages): the embeddings, then
the vision and text blocks interleaved by depth fraction, then the shared encoder (adapters, blocks), then
pooling + projections. Cutting it into contiguous ranges gives every stage a contiguous slice of the image
blocks AND of the text blocks, so neither tower idles a stage while the other runs, and the shared encoder
lands on the last stages. Stages are balanced by forward FLOPs per sample with DeepSpeed's linear-partition
solver (`partition_balanced`).

    python -m pretrain.parallel.pipeline_plan configs/models/vit-b-16.yaml --pp 4
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..arch import Architecture, block_flops


@dataclass(frozen=True)
class PipeLayer:
    kind: str        # embed | vision | text | shared_in | shared | head
    index: int       # block index within its stack (0 for the others)
    flops: float     # forward FLOPs per sample


def layer_order(arch: Architecture) -> list[PipeLayer]:
    v, t, s = arch.vision, arch.text, arch.shared
    blocks = [((i + 0.5) / v.layers, 0, PipeLayer("vision", i, block_flops(v, v.tokens)))
              for i in range(v.layers)]
    blocks += [((j + 0.5) / t.layers, 1, PipeLayer("text", j, block_flops(t, t.context, True)))
               for j in range(t.layers)]
    layers = [PipeLayer("embed", 0, arch.patch_embed_flops())] + [b for *_, b in sorted(blocks)]
    if s.layers:
        if arch.adapter_flops():
            layers.append(PipeLayer("shared_in", 0, arch.adapter_flops()))
        layers += [PipeLayer("shared", k, arch.shared_block_flops()) for k in range(s.layers)]
    return layers + [PipeLayer("head", 0, arch.head_flops())]


def partition(layers: list[PipeLayer], stages: int) -> list[int]:
    """Stage boundaries: stage k holds layers[parts[k]:parts[k+1]]."""
    from deepspeed.runtime.utils import partition_balanced
    return list(partition_balanced([layer.flops for layer in layers], stages))


def stage_flops(layers: list[PipeLayer], parts: list[int]) -> list[float]:
    return [sum(layer.flops for layer in layers[a:b]) for a, b in zip(parts, parts[1:])]


def imbalance(flops: list[float]) -> float:
    """(slowest stage - mean) / mean: the fraction of a step the other stages wait for the slowest."""
    mean = sum(flops) / len(flops)
    return max(flops) / mean - 1.0


def describe(arch: Architecture, stages: int) -> str:
    layers = layer_order(arch)
    parts = partition(layers, stages)
    flops = stage_flops(layers, parts)
    lines = [f"{'stage':>5}  {'layers':>6}  {'vision blocks':>13}  {'text blocks':>11}  {'other':<18} {'GFLOP':>8}"]
    for k, (a, b) in enumerate(zip(parts, parts[1:])):
        own = layers[a:b]
        span = {kind: [x.index for x in own if x.kind == kind] for kind in ("vision", "text")}
        rng = {kind: f"{ix[0]}-{ix[-1]}" if ix else "-" for kind, ix in span.items()}
        other = ",".join(x.kind + (str(x.index) if x.kind == "shared" else "") for x in own
                         if x.kind not in ("vision", "text"))
        lines.append(f"{k:>5}  {b - a:>6}  {rng['vision']:>13}  {rng['text']:>11}  {other:<18} {flops[k] / 1e9:>8.2f}")
    lines.append(f"imbalance (max/mean - 1): {100 * imbalance(flops):.1f}%")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Per-stage FLOPs of the pipeline partition")
    p.add_argument("arch", help="architecture YAML/JSON (configs/models/*.yaml) or a run config")
    p.add_argument("--pp", type=int, required=True)
    args = p.parse_args(argv)
    print(describe(Architecture.load(args.arch), args.pp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
