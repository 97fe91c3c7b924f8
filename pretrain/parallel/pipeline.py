"""A DeepSpeed PipelineModule that spans both CLIP towers, built from the single-device model.

The layers are `pipeline_plan.layer_order(arch)`, cut at the FLOPs-balanced boundaries of
`pipeline_plan.partition`. Each layer owns modules of the seeded (and tensor-parallel) `CLIP`, mounted under
their canonical paths, and runs the model's own methods on them (`VisionTower.embed`, `CLIP.pool_text`, ...):
the math has one source, model/. Between layers flows one tuple of tensors:

    (image tokens [b, n_img, w_v], text tokens [b, n_txt, w_t], end-of-text index [b] int64)

The head layer returns (image features, text features, logit scale) and the loss runs on the last stage.
`named_parameters` drops PipelineModule's layer-index prefix, so parameter names (and with them the ZeRO
optimizer files, `universal_checkpoint_info` and universal checkpoints) equal the single-device model's:
a checkpoint reshards between pp = 1 and pp > 1 like between any two tensor-parallel layouts.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from deepspeed.pipe import PipelineModule
from torch import nn

from ..model import CLIP
from ..model.towers import SharedEncoder, VisionTower
from .pipeline_plan import layer_order, partition


class MountedLayer(nn.Module):
    """A pipeline layer that holds the given modules/parameters at their canonical dotted paths."""

    def __init__(self, pieces: dict[str, nn.Module | nn.Parameter]):
        super().__init__()
        for path, obj in pieces.items():
            node = self
            *parents, leaf = path.split(".")
            for name in parents:
                if name not in node._modules:
                    node.add_module(name, nn.Module())
                node = node._modules[name]
            if isinstance(obj, nn.Parameter):
                node.register_parameter(leaf, obj)
            else:
                node.add_module(leaf, obj)


class Embed(MountedLayer):
    def __init__(self, clip: CLIP):
        v = clip.visual
        super().__init__({"visual.conv1": v.conv1, "visual.class_embedding": v.class_embedding,
                          "visual.positional_embedding": v.positional_embedding, "visual.ln_pre": v.ln_pre,
                          "token_embedding": clip.token_embedding, "positional_embedding": clip.positional_embedding})

    def forward(self, inputs):
        image, text = inputs
        return VisionTower.embed(self.visual, image), CLIP.embed_text(self, text), CLIP.eot_index(text)


class TowerBlock(MountedLayer):
    """Block `index` of one tower: transforms its stream, passes the other through."""

    def __init__(self, clip: CLIP, tower: str, index: int):
        stack = clip.visual.transformer if tower == "vision" else clip.transformer
        self.path = ("visual.transformer" if tower == "vision" else "transformer") + f".resblocks.{index}"
        self.stream = 0 if tower == "vision" else 1
        super().__init__({self.path: stack.resblocks[index]})

    def forward(self, inputs):
        out = list(inputs)
        out[self.stream] = self.get_submodule(self.path)(inputs[self.stream], causal=self.stream == 1)
        return tuple(out)


class SharedAdapters(MountedLayer):
    """The per-modality linear adapters into the shared encoder's width (only those that exist)."""

    def __init__(self, clip: CLIP):
        s = clip.shared
        super().__init__({f"shared.{n}": getattr(s, n) for n in ("adapter_visual", "adapter_text")
                          if getattr(s, n) is not None})

    def forward(self, inputs):
        image, text, eot = inputs
        return SharedEncoder.adapt(self.shared, image, "image"), SharedEncoder.adapt(self.shared, text, "text"), eot


class SharedBlock(MountedLayer):
    """Shared block `index`, applied to both streams (causal on text), as SharedEncoder.forward does."""

    def __init__(self, clip: CLIP, index: int):
        self.path = f"shared.transformer.resblocks.{index}"
        super().__init__({self.path: clip.shared.transformer.resblocks[index]})

    def forward(self, inputs):
        image, text, eot = inputs
        block = self.get_submodule(self.path)
        return block(image, causal=False), block(text, causal=True), eot


class Head(MountedLayer):
    def __init__(self, clip: CLIP):
        v = clip.visual
        super().__init__({"visual.ln_post": v.ln_post, "visual.proj": v.proj, "ln_final": clip.ln_final,
                          "text_projection": clip.text_projection, "logit_scale": clip.logit_scale})

    def forward(self, inputs):
        image, text, eot = inputs
        return (F.normalize(VisionTower.pool(self.visual, image), dim=-1),
                F.normalize(CLIP.pool_text(self, text, eot), dim=-1), CLIP.scale(self))


def build_layers(clip: CLIP) -> list[nn.Module]:
    # the shared layers follow SharedEncoder.forward: adapters, then the blocks
    make = {"embed": lambda i: Embed(clip), "vision": lambda i: TowerBlock(clip, "vision", i),
            "text": lambda i: TowerBlock(clip, "text", i), "shared_in": lambda i: SharedAdapters(clip),
            "shared": lambda i: SharedBlock(clip, i), "head": lambda i: Head(clip)}
    return [make[layer.kind](layer.index) for layer in layer_order(clip.arch)]


class CLIPPipeline(PipelineModule):
    """Stages cut by FLOPs (pipeline_plan), parameters named as in the single-device CLIP."""

    def __init__(self, clip: CLIP, topology, loss_fn):
        object.__setattr__(self, "_flops_parts", partition(layer_order(clip.arch), topology.get_dim("pipe")))
        super().__init__(layers=build_layers(clip), topology=topology, loss_fn=loss_fn, partition_method="flops")
        object.__setattr__(self, "arch", clip.arch)

    def _partition_layers(self, method="flops"):
        self.parts = list(self._flops_parts)
        stage = self._topo.get_coord(self.global_rank).pipe
        self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            yield name.split(".", 1)[1], p  # "<layer index>.<canonical name>" -> "<canonical name>"


def merge_stages(state: dict[str, torch.Tensor], pp_group) -> dict[str, torch.Tensor]:
    """Every stage's tensors, on every rank (collective over the pipeline group)."""
    if pp_group is None or dist.get_world_size(pp_group) == 1:
        return state
    parts = [None] * dist.get_world_size(pp_group)
    dist.all_gather_object(parts, {k: v.cpu() for k, v in state.items()}, group=pp_group)
    return {k: v for part in parts for k, v in part.items()}


def full_state(named, vocab: int, tp_group, pp_group) -> dict[str, torch.Tensor]:
    """Full canonical tensors of the whole model from this rank's TP shards of its pipeline stage: gathered over
    TP, then merged over PP (collective over both groups; a group of None or of size 1 is skipped)."""
    from .tensor import gather_full
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        state = gather_full(named, vocab, tp_group)
    else:
        state = {n: t.detach() for n, t in named}
    return merge_stages(state, pp_group)
