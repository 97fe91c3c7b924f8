"""Export a checkpoint as an OpenCLIP model folder, which `open_clip.create_model("local-dir:DIR")` and
`eval.load.load_checkpoint(DIR)` both read:

    python -m eval.export --checkpoint PATH --out DIR [--weights live|ema] [--format openclip|hf]

DIR gets open_clip_pytorch_model.bin (the state dict), open_clip_config.json (model_cfg, preprocess_cfg, and
under "growclip" the architecture, step and source checkpoint) and tokenizer.model (OpenCLIP has no slot for a
SentencePiece tokenizer, so OpenCLIP users pass ours themselves). A shared encoder cannot be exported.

`--format hf` writes a Hugging Face CLIPModel folder instead (`transformers.CLIPModel.from_pretrained(DIR)`):
config.json + model.safetensors (model/hf.py maps the names; exact `gelu`, eos = the largest id) and, for a run
whose tokenizer is an HF tokenizer.json (model.init_from {hf: DIR}), that tokenizer as CLIPTokenizer saves it;
another tokenizer is copied as tokenizer.model, which CLIPTokenizer cannot read. A shared encoder, or an attention
inner dim other than the width (head_dim != width / heads, e.g. after a heads move), cannot be expressed in HF's
CLIPModel and is refused in one line before anything is written.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from pretrain.arch import ArchitectureError
from pretrain.checkpoint import CheckpointError
from pretrain.data.transforms import OPENAI_MEAN, OPENAI_STD
from pretrain.model import CLIP
from pretrain.model.hf import hf_config, hf_state_from_ours
from pretrain.model.openclip import export_openclip, openclip_config

from .load import OPENCLIP_CONFIG, OPENCLIP_WEIGHTS, Loaded, load_checkpoint


def export(loaded: Loaded, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": openclip_config(loaded.arch),
              "preprocess_cfg": {"image_size": loaded.arch.vision.image_size, "mean": list(OPENAI_MEAN),
                                 "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest"},
              "growclip": {"architecture": loaded.arch.to_dict(), "step": loaded.step, "checkpoint": str(loaded.path)}}
    torch.save(export_openclip(loaded.model), out / OPENCLIP_WEIGHTS[0])
    (out / OPENCLIP_CONFIG).write_text(json.dumps(config, indent=2))
    shutil.copyfile(loaded.tokenizer.model_path, out / "tokenizer.model")
    return out


def export_hf(model: CLIP, tokenizer, out: str | Path) -> Path:
    """An HF CLIPModel folder computing what `model` computes; tokenizer: the run's (load_tokenizer's) or None."""
    config = hf_config(model.arch, float(model.logit_scale.detach().reshape(())))  # refuses before any write
    from transformers import CLIPConfig, CLIPModel
    hf = CLIPModel(CLIPConfig.from_dict(config))
    hf.load_state_dict(hf_state_from_ours(model.float()), strict=True)
    out = Path(out)
    hf.save_pretrained(out)
    if tokenizer is not None and tokenizer.kind == "hf_clip":
        tokenizer.save_pretrained(out)
    elif tokenizer is not None:
        shutil.copyfile(tokenizer.model_path, out / "tokenizer.model")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default="live", choices=["live", "ema"])
    p.add_argument("--format", default="openclip", choices=["openclip", "hf"],
                   help="an OpenCLIP model folder, or a Hugging Face CLIPModel folder")
    args = p.parse_args(argv)
    try:
        loaded = load_checkpoint(args.checkpoint, args.weights)
        out = export(loaded, args.out) if args.format == "openclip" else \
            export_hf(loaded.model, loaded.tokenizer, args.out)
    except (CheckpointError, ArchitectureError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
