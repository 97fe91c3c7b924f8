"""`model.init_from`: start a run at step 0 from CLIP weights the user already has, with their tokenizer.

    model:
      init_from: {openclip: ViT-B-32, weights: PATH}   # PATH: .pt / .pth / .bin (a torch state dict, loaded with
                                                       # weights_only=True) or .safetensors
      init_from: {openclip: my_model.json, weights: PATH}  # an OpenCLIP model-config file instead of a name
      init_from: {folder: DIR}                         # an OpenCLIP model folder: what eval.export writes, or one
                                                       # with open_clip_config.json + weights (open_clip's layout)
      init_from: {hf: DIR}                             # a Hugging Face CLIPModel folder (save_pretrained's layout:
                                                       # config.json, model.safetensors or pytorch_model.bin, and
                                                       # the tokenizer's tokenizer.json)

The architecture comes from the source: open_clip's bundled model configs (`open_clip.get_model_config`, no
download), the .json, or the folder's open_clip_config.json (our exact architecture under "growclip", else its
model_cfg), or the HF config.json (model/hf.py maps its names and refuses what it cannot represent). A config
field our model cannot represent (quick_gelu, a ResNet tower, SigLIP's logit bias, ...) is an
error naming it (model/openclip.py checked_arch_from_openclip_config). The tokenizer comes with it: open_clip's
CLIP BPE vocabulary for a model name or .json, the folder's tokenizer.model for a folder (else the CLIP BPE), the
HF folder's tokenizer.json (run by transformers.CLIPTokenizer, data/hf_tokenizer.py) for an HF folder.
`model.init_from` replaces the other model keys (giving both is an error), and data.tokenizer is set to the
source's tokenizer (a different file there is an error). Only a fresh run reads the weights: a resumed run, and
every restart after a growth, loads its own checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .arch import Architecture, ArchitectureError
from .model.hf import HF_CONFIG, HF_WEIGHTS, arch_from_hf_config, openclip_state_from_hf
from .model.openclip import OPENCLIP_CONFIG, OPENCLIP_WEIGHTS, checked_arch_from_openclip_config, import_openclip

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
FOLDER_WEIGHTS = (*OPENCLIP_WEIGHTS, "open_clip_model.safetensors")


class InitError(ValueError):
    """A bad model.init_from: one line naming the key or file (pretrain/main.py exits 2)."""


@dataclass(frozen=True)
class InitSource:
    spec: dict
    arch: Architecture
    weights: Path
    tokenizer: Path
    hf: bool = False  # weights under Hugging Face CLIPModel names


def resolve(spec, key: str = "model.init_from") -> InitSource:
    """Check the spec and read the architecture and tokenizer of its source (the weights are not read here)."""
    if not isinstance(spec, dict) or set(spec) not in ({"openclip", "weights"}, {"folder"}, {"hf"}):
        raise InitError(f"{key} must be {{openclip: NAME, weights: PATH}}, {{folder: PATH}} or {{hf: PATH}}, "
                        f"got {spec!r}")
    if "folder" in spec:
        return _folder(Path(str(spec["folder"])), spec, key)
    if "hf" in spec:
        return _hf(Path(str(spec["hf"])), spec, key)
    name, weights = str(spec["openclip"]), Path(str(spec["weights"]))
    if name.endswith(".json"):
        try:
            cfg = json.loads(Path(name).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InitError(f"{key}.openclip: cannot read the OpenCLIP model config {name} ({e})") from None
    else:
        import open_clip
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise InitError(f"{key}.openclip: unknown OpenCLIP model {name!r} (not one of open_clip's "
                            f"{len(open_clip.list_models())} bundled configs; give a model-config .json instead)")
    if weights.suffix not in WEIGHT_SUFFIXES:
        raise InitError(f"{key}.weights: {weights} is not a {' / '.join(WEIGHT_SUFFIXES)} file")
    if not weights.is_file():
        raise InitError(f"{key}.weights: {weights} does not exist")
    from .data.clip_bpe import bundled_vocab
    return InitSource(spec, _arch(cfg, f"{key}.openclip ({name})"), weights, bundled_vocab())


def _folder(folder: Path, spec: dict, key: str) -> InitSource:
    config_path = folder / OPENCLIP_CONFIG
    if not config_path.is_file():
        raise InitError(f"{key}.folder: {folder} has no {OPENCLIP_CONFIG} (write one with python -m eval.export)")
    weights = next((folder / n for n in FOLDER_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise InitError(f"{key}.folder: {folder} has no weights (one of {', '.join(FOLDER_WEIGHTS)})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise InitError(f"{config_path}: invalid JSON ({e})") from None
    if "architecture" in config.get("growclip", {}):
        arch = Architecture.from_dict(config["growclip"]["architecture"], source=str(config_path))
    elif "model_cfg" in config:
        arch = _arch(config["model_cfg"], f"{config_path} model_cfg")
    else:
        raise InitError(f"{config_path}: neither growclip.architecture nor model_cfg")
    tokenizer = folder / "tokenizer.model"
    if not tokenizer.is_file():
        from .data.clip_bpe import bundled_vocab
        tokenizer = bundled_vocab()
    return InitSource(spec, arch, weights, tokenizer)


def _hf(folder: Path, spec: dict, key: str) -> InitSource:
    config_path = folder / HF_CONFIG
    if not config_path.is_file():
        raise InitError(f"{key}.hf: {folder} has no {HF_CONFIG} (a folder CLIPModel.save_pretrained wrote)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise InitError(f"{config_path}: invalid JSON ({e})") from None
    try:
        arch = arch_from_hf_config(config, str(config_path))
    except ArchitectureError as e:
        raise InitError(str(e)) from None
    weights = next((folder / n for n in HF_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise InitError(f"{key}.hf: {folder} has no weights (one of {', '.join(HF_WEIGHTS)})")
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise InitError(f"{key}.hf: {folder} has no tokenizer.json (with only vocab.json + merges.txt, write it: "
                        f"CLIPTokenizer.from_pretrained(DIR).save_pretrained(DIR))")
    return InitSource(spec, arch, weights, tokenizer, hf=True)


def _arch(cfg: dict, source: str) -> Architecture:
    try:
        return checked_arch_from_openclip_config(cfg, source)
    except ArchitectureError as e:
        raise InitError(str(e)) from None


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """The OpenCLIP state dict in a weights file (an OpenCLIP training checkpoint's "state_dict" and DDP's
    "module." prefix undone), never running code: safetensors, or torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise InitError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        from .checkpoint import load_checked
        state = load_checked(path, deepspeed_classes=False)  # CheckpointError naming the file
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InitError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def build(source: InitSource):
    """Our single-device CLIP holding the source's weights (float32)."""
    try:
        state = load_state(source.weights)
        model = import_openclip(openclip_state_from_hf(state) if source.hf else state, source.arch)
    except ArchitectureError as e:
        raise InitError(f"{source.weights}: {e}") from None
    return model.float()
