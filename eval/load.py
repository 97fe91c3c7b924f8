"""Any checkpoint -> a single-device CLIP, its tokenizer and its eval transform.

Accepts a run folder, a DeepSpeed checkpoint folder or tag (ZeRO 0-3), or a universal checkpoint. With
`weights="ema"` the momentum (EMA) weights stored in the client state are loaded instead of the live ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.data.tokenizer import Tokenizer
from pretrain.data.transforms import eval_transform
from pretrain.model import CLIP


@dataclass
class Loaded:
    model: CLIP
    tokenizer: Tokenizer
    transform: object
    arch: Architecture
    step: int
    path: Path


def load_checkpoint(path: str | Path, weights: str = "live", device: str = "cpu") -> Loaded:
    base, tag = ckpt.resolve(path)
    tag_dir = base / tag
    client = ckpt.read_client_state(tag_dir)
    arch = Architecture.from_dict(client["architecture"], source=str(tag_dir))
    tok_file = tag_dir / "tokenizer.model"
    if not tok_file.is_file():
        raise ckpt.CheckpointError(f"{tag_dir}: missing tokenizer.model")
    tokenizer = Tokenizer(str(tok_file), arch.text.context)
    if tokenizer.sha256 != client["tokenizer_sha256"]:
        raise ckpt.CheckpointError(f"{tok_file}: sha256 does not match the checkpoint's tokenizer hash")
    if weights == "ema":
        state = client["ema"]["shadow"]
    elif weights == "live":
        state = ckpt.full_state_dict(tag_dir)
    else:
        raise ValueError(f"weights must be 'live' or 'ema', got {weights!r}")
    model = CLIP(arch)
    model.load_state_dict(state, strict=True)
    return Loaded(model.to(device).eval(), tokenizer, eval_transform(arch.vision.image_size), arch,
                  client["step"], tag_dir)
