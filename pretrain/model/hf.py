"""Hugging Face `transformers.CLIPModel` <-> our CLIP (OpenCLIP names, model/openclip.py): the config, the tensor
names and the few layout differences. Both are pre-LN ViT/text transformers with a class-token vision pool, a causal
text tower pooled at its end-of-text token, bias-free projections and a learned log logit scale; HF keeps q, k and
v as three Linear layers where we keep one in_proj, stores projections as Linear weights ([out, in]) where we keep
[in, out] matrices, and its logit_scale is a scalar where ours is [1]. What our model does not implement is refused
by name: `hidden_act` other than exact `gelu` (CLIP's default `quick_gelu` included), `layer_norm_eps` != 1e-5,
`num_channels` != 3, an `eos_token_id` that is not the largest id (our text tower pools at the largest id; HF pools
at the first eos_token_id, or at argmax(input_ids) for the old configs with eos_token_id 2), another model_type.
"""
from __future__ import annotations

import re

import torch

from ..arch import Architecture, ArchitectureError
from .openclip import checked_arch_from_openclip_config

HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
LN_EPS = 1e-5  # torch.nn.LayerNorm's default: our towers' LayerNorms
_LAYER = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
          "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias", "logit_scale": "logit_scale"}
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
_TOWERS = (("text_model.encoder.layers.", "transformer.resblocks."),
           ("vision_model.encoder.layers.", "visual.transformer.resblocks."))


def arch_from_hf_config(config: dict, source: str) -> Architecture:
    """Our Architecture of an HF CLIP config.json (its omitted fields are transformers' CLIPConfig defaults)."""
    if config.get("model_type") != "clip":
        raise ArchitectureError(f"{source}: model_type={config.get('model_type')!r}: only Hugging Face CLIPModel "
                                f"(model_type 'clip') can be imported")
    from transformers import CLIPConfig
    cfg = CLIPConfig.from_dict(config)
    t, v = cfg.text_config, cfg.vision_config
    for part, c in (("text_config", t), ("vision_config", v)):
        if c.hidden_act != "gelu":
            raise ArchitectureError(f"{source}: {part}.hidden_act={c.hidden_act!r}: GrowCLIP's model has exact GELU "
                                    f"only (no QuickGELU)")
        if c.layer_norm_eps != LN_EPS:
            raise ArchitectureError(f"{source}: {part}.layer_norm_eps={c.layer_norm_eps}: GrowCLIP's LayerNorms "
                                    f"use {LN_EPS}")
        if c.hidden_size % c.num_attention_heads:
            raise ArchitectureError(f"{source}: {part}.hidden_size={c.hidden_size} is not divisible by "
                                    f"num_attention_heads={c.num_attention_heads}")
    if v.num_channels != 3:
        raise ArchitectureError(f"{source}: vision_config.num_channels={v.num_channels}: GrowCLIP reads RGB images")
    if t.eos_token_id not in (2, t.vocab_size - 1):
        raise ArchitectureError(f"{source}: text_config.eos_token_id={t.eos_token_id}: GrowCLIP's text tower pools "
                                f"at the largest id ({t.vocab_size - 1})")
    return checked_arch_from_openclip_config(
        {"embed_dim": cfg.projection_dim,
         "vision_cfg": {"image_size": v.image_size, "layers": v.num_hidden_layers, "width": v.hidden_size,
                        "head_width": v.hidden_size // v.num_attention_heads,
                        "mlp_ratio": v.intermediate_size / v.hidden_size, "patch_size": v.patch_size},
         "text_cfg": {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "width": t.hidden_size,
                      "heads": t.num_attention_heads, "layers": t.num_hidden_layers,
                      "mlp_ratio": t.intermediate_size / t.hidden_size}}, source)


def openclip_state_from_hf(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIPModel tensors under OpenCLIP's names (what import_openclip takes); position_ids buffers dropped."""
    out, qkv = {}, {}
    for name, tensor in hf.items():
        if name.endswith("position_ids"):
            continue
        if name in _TOP:
            out[_TOP[name]] = tensor
        elif name in ("visual_projection.weight", "text_projection.weight"):
            out["visual.proj" if name.startswith("visual") else "text_projection"] = tensor.t().contiguous()
        else:
            for theirs, ours in _TOWERS:
                if name.startswith(theirs):
                    index, rest = name[len(theirs):].split(".", 1)
                    prefix = f"{ours}{index}."
                    if m := _QKV.fullmatch(rest):
                        qkv[(prefix, m.group(1), m.group(2))] = tensor
                    else:
                        old = next((k for k in _LAYER if rest.startswith(k)), None)
                        out[prefix + (_LAYER[old] + rest[len(old):] if old else rest)] = tensor
                    break
            else:
                out[name] = tensor  # unknown: import_openclip names it as unexpected
    for prefix, kind in sorted({(p, k) for p, _, k in qkv}):
        try:
            out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([qkv[(prefix, c, kind)] for c in "qkv"])
        except KeyError as e:
            raise ArchitectureError(f"HF state dict lacks the {e.args[0][1]}_proj.{kind} of {prefix}") from None
    return out


def hf_state_from_ours(model) -> dict[str, torch.Tensor]:
    """Our model's tensors under HF CLIPModel names (hf_config(model.arch) checks it can be expressed)."""
    back = {ours: theirs for theirs, ours in _TOP.items()}
    out = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().clone()
        if name in back:
            out[back[name]] = tensor.reshape(()) if name == "logit_scale" else tensor
        elif name in ("visual.proj", "text_projection"):
            out["visual_projection.weight" if name == "visual.proj" else "text_projection.weight"] = \
                tensor.t().contiguous()
        else:
            theirs, ours = next(pair for pair in _TOWERS if name.startswith(pair[1]))
            index, rest = name[len(ours):].split(".", 1)
            prefix = f"{theirs}{index}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for c, part in zip("qkv", tensor.chunk(3)):
                    out[f"{prefix}self_attn.{c}_proj.{kind}"] = part.clone()
            else:
                new = next((k for k, v in _LAYER.items() if rest.startswith(v)), None)
                out[prefix + (new + rest[len(_LAYER[new]):] if new else rest)] = tensor
    return out


def hf_config(arch: Architecture, logit_scale: float) -> dict:
    """The config.json of the HF CLIPModel that computes what our model computes; an architecture it cannot
    express is an ArchitectureError saying why."""
    if arch.shared.layers:
        raise ArchitectureError(f"shared.layers={arch.shared.layers}: HF CLIPModel has no shared encoder, "
                                f"cannot export")
    towers = {}
    for name, tower in (("vision", arch.vision), ("text", arch.text)):
        if tower.attn_width != tower.width:
            raise ArchitectureError(
                f"{name}.head_dim={tower.attn_head_dim}: the attention inner dim {tower.heads}x{tower.attn_head_dim} "
                f"= {tower.attn_width} differs from {name}.width={tower.width}, and HF CLIPModel's attention ties "
                f"the two (head_dim = hidden_size / num_attention_heads); cannot export")
        hidden = int(tower.width * tower.mlp_ratio)
        towers[name] = {"hidden_size": tower.width, "intermediate_size": hidden, "num_attention_heads": tower.heads,
                        "num_hidden_layers": tower.layers, "hidden_act": "gelu", "layer_norm_eps": LN_EPS,
                        "projection_dim": arch.embed_dim}
    v, t = arch.vision, arch.text
    towers["vision"].update(image_size=v.image_size, patch_size=v.patch, num_channels=3)
    towers["text"].update(vocab_size=t.vocab, max_position_embeddings=t.context, eos_token_id=t.vocab - 1,
                          bos_token_id=t.vocab - 2, pad_token_id=t.vocab - 1)
    from transformers import CLIPConfig
    cfg = CLIPConfig(text_config=towers["text"], vision_config=towers["vision"], projection_dim=arch.embed_dim,
                     logit_scale_init_value=logit_scale)
    return cfg.to_dict()
