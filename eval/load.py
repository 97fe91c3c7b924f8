"""Any checkpoint -> a single-device CLIP, its tokenizer and its eval transform.

Accepted: a run folder, a DeepSpeed checkpoint folder or tag (ZeRO 0-3, any data-parallel size), a universal
checkpoint, or an OpenCLIP export (a folder as eval/export.py writes it, or a bare state-dict file). With
`weights="ema"` the momentum (EMA) weights stored in the client state are loaded instead of the live ones.
An OpenCLIP state dict carries no tokenizer and no head counts: `tokenizer` names the SentencePiece model, and
heads come from open_clip_config.json beside the weights when there (else OpenCLIP's width / 64).

Every file of a DeepSpeed or universal checkpoint is loaded with weights_only=True (pretrain/checkpoint.py
check_files) before anything reads it, DeepSpeed's zero_to_fp32 and ds_to_universal included: a file that
fails (a pickle that would run code, a truncated shard) is a CheckpointError naming it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.data.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from pretrain.data.transforms import eval_transform
from pretrain.model import CLIP
from pretrain.model.openclip import (
    OPENCLIP_CONFIG,
    OPENCLIP_WEIGHTS,
    arch_from_openclip_config,
    arch_from_state_dict,
    import_openclip,
)


@dataclass
class Loaded:
    model: CLIP
    tokenizer: Tokenizer
    transform: object
    arch: Architecture
    step: int | None  # None for an OpenCLIP export without our metadata
    path: Path
    format: str  # deepspeed | universal | openclip


def load_checkpoint(path: str | Path, weights: str = "live", device: str = "cpu",
                    tokenizer: str | Path | None = None) -> Loaded:
    if weights not in ("live", "ema"):
        raise ValueError(f"weights must be 'live' or 'ema', got {weights!r}")
    path = Path(path)
    if path.is_file() or (path / OPENCLIP_CONFIG).is_file():
        if weights == "ema":
            raise ckpt.CheckpointError(f"{path}: an OpenCLIP export holds one set of weights; --weights ema needs "
                                       f"a DeepSpeed or universal checkpoint")
        return _load_openclip(path, device, tokenizer)
    base, tag = ckpt.resolve(path)
    tag_dir = base / tag
    ckpt.check_files(tag_dir)  # before any reader, DeepSpeed's zero_to_fp32 / ds_to_universal included
    client = ckpt.read_client_state(tag_dir)
    arch = Architecture.from_dict(client["architecture"], source=str(tag_dir))
    tok = _tokenizer(Path(tokenizer) if tokenizer else _find_tokenizer(tag_dir, client), arch, tag_dir)
    if tok.sha256 != client["tokenizer_sha256"]:
        raise ckpt.CheckpointError(f"{tok.model_path}: sha256 does not match the checkpoint's tokenizer hash")
    if weights == "ema" and not (client.get("ema") or {}).get("shadow"):
        raise ckpt.CheckpointError(f"{tag_dir}: no EMA weights in the client state")
    state = client["ema"]["shadow"] if weights == "ema" else ckpt.full_state_dict(tag_dir)
    model = CLIP(arch)
    model.load_state_dict(state, strict=True)
    return Loaded(model.to(device).eval(), tok, eval_transform(arch.vision.image_size), arch, client["step"], tag_dir,
                  "universal" if ckpt.is_universal(tag_dir) else "deepspeed")


def _find_tokenizer(tag_dir: Path, client: dict) -> Path:
    """The checkpoint's own copy; else (ds_to_universal does not copy it) the file the run was configured with,
    if it is still there: the sha256 check that follows makes sure it is the same tokenizer."""
    trained_with = Path(client.get("run_config", {}).get("data", {}).get("tokenizer") or tag_dir / "tokenizer.model")
    return tag_dir / "tokenizer.model" if (tag_dir / "tokenizer.model").is_file() else trained_with


def _tokenizer(path: Path, arch: Architecture, source: Path) -> Tokenizer:
    if not path.is_file():
        raise ckpt.CheckpointError(f"{source}: no tokenizer at {path}; pass --tokenizer PATH (the tokenizer file "
                                   f"the checkpoint was trained with: a SentencePiece .model or CLIP BPE .txt.gz)")
    try:
        tok = load_tokenizer(path, arch.text.context)
    except TokenizerError as e:
        raise ckpt.CheckpointError(f"{e} (the tokenizer of {source})") from None
    if tok.vocab_size != arch.text.vocab:
        raise ckpt.CheckpointError(f"{path}: {tok.vocab_size} token ids, but {source} has text.vocab={arch.text.vocab}")
    return tok


def _load_openclip(path: Path, device: str, tokenizer: str | Path | None) -> Loaded:
    folder = path.parent if path.is_file() else path
    weights = path if path.is_file() else next((folder / n for n in OPENCLIP_WEIGHTS if (folder / n).is_file()), None)
    if weights is None:
        raise ckpt.CheckpointError(f"{folder}: no OpenCLIP weights (one of {', '.join(OPENCLIP_WEIGHTS)})")
    state = ckpt.load_checked(weights, mmap=False, deepspeed_classes=False)  # weights_only=True; errors name it
    if not isinstance(state, dict):
        raise ckpt.CheckpointError(f"{weights}: not a torch state dict (a {type(state).__name__})")
    if ckpt.CLIENT_KEY in state:
        raise ckpt.CheckpointError(f"{weights} is a DeepSpeed model-states file; pass its folder {folder}")
    state = state.get("state_dict", state)  # an OpenCLIP training checkpoint wraps it
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = json.loads((folder / OPENCLIP_CONFIG).read_text()) if (folder / OPENCLIP_CONFIG).is_file() else {}
    if "architecture" in config.get("growclip", {}):  # our own export: the exact architecture
        arch = Architecture.from_dict(config["growclip"]["architecture"], source=str(folder / OPENCLIP_CONFIG))
    elif "model_cfg" in config:
        arch = arch_from_openclip_config(config["model_cfg"])
    else:
        arch = arch_from_state_dict(state)
        print(f"[eval] {weights}: no {OPENCLIP_CONFIG}; assuming OpenCLIP's head width 64 "
              f"(vision.heads={arch.vision.heads}, text.heads={arch.text.heads})", file=sys.stderr)
    tok = _tokenizer(Path(tokenizer) if tokenizer else folder / "tokenizer.model", arch, weights)
    model = import_openclip(state, arch)
    return Loaded(model.to(device).eval(), tok, eval_transform(arch.vision.image_size), arch,
                  config.get("growclip", {}).get("step"), weights, "openclip")
