"""OpenCLIP interop. Our canonical parameter names ARE OpenCLIP's, so import/export is a key check, shape
inference and one reshape (logit_scale: OpenCLIP [] <-> ours [1], see clip.py); nothing is renamed.
`open_clip` itself is only imported by `to_openclip_model`.
"""
import dataclasses
import re

import torch

from ..arch import Architecture, ArchitectureError, SharedEncoder, TextTower, VisionTower
from .clip import CLIP

HEAD_WIDTH = 64  # OpenCLIP's default head width for both towers
# an OpenCLIP model folder (open_clip's local-dir / hub layout; eval/export.py writes the first weights name)
OPENCLIP_CONFIG = "open_clip_config.json"
OPENCLIP_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "open_clip_model.pt")
_MAPPED = {"vision_cfg": {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"},
           "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}}
_IGNORED = {"output_tokens", "timm_model_pretrained", "hf_model_pretrained", "cast_dtype"}  # no effect on weights


def checked_arch_from_openclip_config(cfg: dict, source: str) -> Architecture:
    """The Architecture of an OpenCLIP model config (open_clip.get_model_config(name) or a model_cfg), its
    omitted fields filled with open_clip's own defaults (CLIPVisionCfg, CLIPTextCfg). Every field we do not map
    must have open_clip's default, which is what our model implements (GELU, ln_pre, class-token and argmax
    pooling, no biases on the projections, ...): anything else is an ArchitectureError naming the field."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    for key, value in cfg.items():
        if key not in ("embed_dim", "vision_cfg", "text_cfg") and key not in _IGNORED and value:
            raise ArchitectureError(f"{source}: {key}={_short(value)}: GrowCLIP's model cannot represent it")
    filled = {}
    for part, cls in (("vision_cfg", CLIPVisionCfg), ("text_cfg", CLIPTextCfg)):
        given = cfg.get(part)
        if not isinstance(given, dict):
            raise ArchitectureError(f"{source}: {part} is missing or not a mapping")
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in given.items():
            if key not in known:
                raise ArchitectureError(f"{source}: {part}.{key}={value!r}: not an OpenCLIP {cls.__name__} field")
        default, full = cls(), cls(**given)
        for f in dataclasses.fields(cls):
            value = getattr(full, f.name)
            if f.name in _MAPPED[part] or f.name in _IGNORED or value == getattr(default, f.name):
                continue
            raise ArchitectureError(f"{source}: {part}.{f.name}={value!r}: GrowCLIP's model cannot represent it "
                                    f"(it implements OpenCLIP's default {getattr(default, f.name)!r})")
        for name in _MAPPED[part]:
            value = getattr(full, name)
            if isinstance(value, (list, tuple)) or value is None:
                raise ArchitectureError(f"{source}: {part}.{name}={value!r}: GrowCLIP's model needs one number")
        filled[part] = {name: getattr(full, name) for name in _MAPPED[part]}
    if "embed_dim" not in cfg:
        raise ArchitectureError(f"{source}: embed_dim is missing")
    return arch_from_openclip_config({"embed_dim": cfg["embed_dim"], **filled})


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def arch_from_openclip_config(cfg: dict) -> Architecture:
    """Architecture from an OpenCLIP model config (open_clip.get_model_config(name))."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    vw, tw = v["width"], t["width"]
    return Architecture(
        vision=VisionTower(layers=v["layers"], width=vw, heads=v.get("heads", vw // v.get("head_width", HEAD_WIDTH)),
                           mlp_ratio=v.get("mlp_ratio", 4.0), patch=v["patch_size"], image_size=v["image_size"]),
        text=TextTower(layers=t["layers"], width=tw, heads=t.get("heads", tw // HEAD_WIDTH),
                       mlp_ratio=t.get("mlp_ratio", 4.0), vocab=t["vocab_size"], context=t["context_length"]),
        shared=SharedEncoder(layers=0, width=tw, heads=t.get("heads", tw // HEAD_WIDTH)),
        embed_dim=cfg["embed_dim"])


def openclip_config(arch: Architecture) -> dict:
    """The OpenCLIP model config that builds the same network (plain CLIP only)."""
    if arch.shared.layers:
        raise ArchitectureError(f"shared.layers={arch.shared.layers}: OpenCLIP has no shared encoder, cannot export")
    v, t = arch.vision, arch.text
    for name, tower in (("vision", v), ("text", t)):
        if tower.attn_width != tower.width:
            raise ArchitectureError(
                f"{name}.head_dim={tower.head_dim}: the attention inner dim {tower.heads}x{tower.head_dim} = "
                f"{tower.attn_width} differs from {name}.width={tower.width}, and OpenCLIP's attention ties the "
                f"two; cannot export")
    return {"embed_dim": arch.embed_dim,
            "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                           "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio, "patch_size": v.patch},
            "text_cfg": {"context_length": t.context, "vocab_size": t.vocab, "width": t.width, "heads": t.heads,
                         "layers": t.layers, "mlp_ratio": t.mlp_ratio}}


def _count_blocks(keys, prefix: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def arch_from_state_dict(sd: dict, vision_heads: int | None = None, text_heads: int | None = None) -> Architecture:
    """Infer a plain-CLIP architecture from OpenCLIP tensor shapes (heads default to width / 64)."""
    try:
        conv = sd["visual.conv1.weight"]
        vw, patch = conv.shape[0], conv.shape[-1]
        grid = int(round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5))
        tw = sd["token_embedding.weight"].shape[1]
        vhid = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        thid = sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        return Architecture(
            vision=VisionTower(layers=_count_blocks(sd, "visual.transformer.resblocks."), width=vw,
                               heads=vision_heads or vw // HEAD_WIDTH, mlp_ratio=vhid / vw, patch=patch,
                               image_size=grid * patch),
            text=TextTower(layers=_count_blocks(sd, "transformer.resblocks."), width=tw,
                           heads=text_heads or tw // HEAD_WIDTH, mlp_ratio=thid / tw,
                           vocab=sd["token_embedding.weight"].shape[0], context=sd["positional_embedding"].shape[0]),
            shared=SharedEncoder(layers=0, width=tw, heads=text_heads or tw // HEAD_WIDTH),
            embed_dim=sd["text_projection"].shape[1])
    except KeyError as e:
        raise ArchitectureError(f"OpenCLIP state dict lacks {e.args[0]!r}") from e


def import_openclip(state_dict: dict, arch: Architecture | None = None) -> CLIP:
    """A CLIP holding OpenCLIP weights. Keys must match exactly (OpenCLIP's non-persistent buffers aside)."""
    state_dict = {k: v for k, v in state_dict.items() if k != "attn_mask"}
    if "logit_scale" in state_dict:
        state_dict["logit_scale"] = state_dict["logit_scale"].reshape(1)
    arch = arch or arch_from_state_dict(state_dict)
    model = CLIP(arch)
    ours = model.state_dict()
    missing, unexpected = sorted(set(ours) - set(state_dict)), sorted(set(state_dict) - set(ours))
    if missing or unexpected:
        raise ArchitectureError(f"OpenCLIP state dict does not match {arch}: missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]}")
    for k, v in state_dict.items():
        if v.shape != ours[k].shape:
            raise ArchitectureError(
                f"OpenCLIP tensor {k!r} has shape {tuple(v.shape)}, expected {tuple(ours[k].shape)}")
    model.load_state_dict(state_dict)
    return model


def export_openclip(model: CLIP) -> dict[str, torch.Tensor]:
    """OpenCLIP state dict of a plain-CLIP model (a shared encoder cannot be expressed in OpenCLIP)."""
    openclip_config(model.arch)  # raises for a shared encoder or an attention inner dim != width
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["logit_scale"] = sd["logit_scale"].reshape(())
    return sd


def to_openclip_model(model: CLIP):
    """An `open_clip.model.CLIP` with our weights (needs open_clip_torch installed)."""
    from open_clip.model import CLIP as OpenCLIP
    cfg = openclip_config(model.arch)
    oc = OpenCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    oc.load_state_dict(export_openclip(model), strict=True)
    return oc
