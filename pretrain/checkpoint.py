"""The checkpoint contract: DeepSpeed's `save_checkpoint` plus our client state, written atomically.

Layout of a run: `OUT/checkpoints/<tag>/` (DeepSpeed files + tokenizer.model) and `OUT/checkpoints/latest`.
Client state, under the key `growclip`: architecture, step, data position (one entry per data-parallel rank),
tokenizer sha256, EMA weights, layout and growth history. `universal_checkpoint_info` sits beside it, so
`python -m deepspeed.checkpoint.ds_to_universal` converts the checkpoint and universal loading reshards it.

Atomicity: DeepSpeed writes into `<tag>.tmp`; after a barrier rank 0 adds the tokenizer, renames the folder
to `<tag>` and replaces `latest` by rename. A crash mid-save leaves only a `.tmp` folder that nothing reads.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

CLIENT_KEY = "growclip"
MODEL_STATES = "mp_rank_00_model_states.pt"


class CheckpointError(RuntimeError):
    pass


def universal_checkpoint_info(names: list[str], vocab: int, tp: int) -> dict:
    """DeepSpeed's reshaping patterns, derived from the one table of TP cuts (pretrain/parallel/cuts.py):
    replicated, row-parallel (cat dim 1), column-parallel (the default, cat dim 0), the fused QKV as three
    sub-parameters, and the vocab-parallel embedding with its padding."""
    from .parallel.cuts import split_of
    from .parallel.layout import padded_vocab

    def exact(cut):
        return ["^" + re.escape(n) + "$" for n in names if split_of(n) == cut]

    qkv = [n for n in names if split_of(n) == "qkv"]
    sub_params = [{"patterns": ["^" + re.escape(n) + "$" for n in qkv if n.endswith("weight")],
                   "shape": (3, -1), "partition_dim": 0},
                  {"patterns": ["^" + re.escape(n) + "$" for n in qkv if n.endswith("bias")],
                   "shape": (3,), "partition_dim": 0}]
    return {
        "universal_checkpoint_version": 0.2,
        "tp_replicated_parameter_patterns": exact("replicated"),
        "parameter_to_average_patterns": [],
        "parameter_with_row_parallelism_patterns": exact("row"),
        "vocabulary_parameter_patterns": exact("vocab"),
        "pipeline_replicated_parameter_patterns": [],
        "parameter_with_2_sub_params_cat_dim_0": [],
        "parameter_with_sub_params": [s for s in sub_params if s["patterns"]],
        "original_vocab_size": vocab,
        "padded_vocab_size": padded_vocab(vocab, tp),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(engine, ckpt_dir: str | Path, step: int, client: dict, uc_info: dict, tokenizer_path: str) -> Path:
    """Collective: every rank calls it. Returns the final tag folder."""
    import deepspeed.comm as dist

    ckpt_dir = Path(ckpt_dir)
    tag = f"step{step:08d}"
    final = ckpt_dir / tag
    tmp_tag = tag + ".tmp"
    if dist.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)
    dist.barrier()
    engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, save_latest=False,
                           client_state={CLIENT_KEY: client, "universal_checkpoint_info": uc_info})
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.copyfile(tokenizer_path, ckpt_dir / tmp_tag / "tokenizer.model")
        if final.exists():  # a re-run of the same step: keep the new one, never a half-written mix
            shutil.rmtree(final)
        os.replace(ckpt_dir / tmp_tag, final)
        _write_atomic(ckpt_dir / "latest", tag)
    dist.barrier()
    return final


def resolve(path: str | Path) -> tuple[Path, str]:
    """(load_dir, tag) for a run folder, a checkpoints folder or a tag folder. Clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    for base in (path / "checkpoints", path):
        latest = base / "latest"
        if latest.is_file():
            tag = latest.read_text().strip()
            if not (base / tag).is_dir():
                raise CheckpointError(f"{latest} names tag {tag!r}, but {base / tag} does not exist")
            return base, tag
    if (path / MODEL_STATES).is_file() or (path / "zero").is_dir():
        return path.parent, path.name
    raise CheckpointError(f"{path}: not a checkpoint (no 'latest' file and no {MODEL_STATES})")


def resume_dir(out_dir: str | Path, resume: str | None) -> Path | None:
    """The tag folder a run resumes from: `--resume latest` is the run's own last checkpoint, or a fresh start
    (None) when nothing is saved yet, as OpenCLIP's `--resume latest` does; any other value is a path."""
    out = Path(out_dir)
    if not resume or (resume == "latest" and not (out / "checkpoints" / "latest").is_file()):
        return None
    base, tag = resolve(out if resume == "latest" else resume)
    return base / tag


def is_universal(tag_dir: Path) -> bool:
    return (tag_dir / "zero").is_dir()


def read_client_state(tag_dir: Path) -> dict:
    """Our client state, read without DeepSpeed (weights_only=True; tensors and plain containers only)."""
    f = tag_dir / MODEL_STATES
    if not f.is_file():
        raise CheckpointError(f"{tag_dir}: missing {MODEL_STATES}")
    try:
        sd = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise CheckpointError(f"{f}: cannot be read ({e.__class__.__name__}: {e})") from e
    if CLIENT_KEY not in sd:
        raise CheckpointError(f"{f}: no '{CLIENT_KEY}' client state; not a GrowCLIP checkpoint")
    return sd[CLIENT_KEY]


def load_universal_tensor(path: Path) -> torch.Tensor:
    """One tensor of a universal checkpoint; its metadata may hold DeepSpeed's SubparamShape (fused QKV)."""
    from deepspeed.checkpoint.universal_checkpoint import SubparamShape
    with torch.serialization.safe_globals([SubparamShape]):
        return torch.load(path, map_location="cpu", weights_only=True)["param"]


def full_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 full weights of a DeepSpeed (ZeRO 0-3) or universal checkpoint, canonical names."""
    tag_dir = Path(tag_dir)
    if is_universal(tag_dir):
        return {p.name: load_universal_tensor(p / "fp32.pt") for p in sorted((tag_dir / "zero").iterdir())
                if p.is_dir()}
    zero_files = list(tag_dir.glob("*zero_pp_rank_*optim_states.pt"))
    if not zero_files and list(tag_dir.glob("layer_*-model_states.pt")):
        return _pipeline_layers(tag_dir)
    if (tag_dir / "mp_rank_01_model_states.pt").is_file():  # TP and/or PP pieces: merge with DeepSpeed's tool
        return _via_universal(tag_dir)
    if zero_files:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name))
    sd = torch.load(tag_dir / MODEL_STATES, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in sd["module"].items()}


def _pipeline_layers(tag_dir: Path) -> dict[str, torch.Tensor]:
    """A ZeRO-0 pipeline checkpoint: one file per layer, whose keys are canonical names (pretrain/parallel/
    pipeline.py mounts every module at its canonical path)."""
    files = sorted(tag_dir.glob("layer_*-model_states.pt"))
    if any("-model_00-" not in f.name for f in files):
        raise CheckpointError(f"{tag_dir}: a ZeRO-0 pipeline checkpoint with tensor parallelism has no optimizer "
                              f"files to merge the shards from; train pp > 1 with tp > 1 under ds_configs/zero1.json")
    state = {}
    for f in files:
        state.update({k: v.float() for k, v in torch.load(f, map_location="cpu", weights_only=True).items()})
    return state


def _via_universal(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Full weights of a tensor-parallel DeepSpeed checkpoint, merged by DeepSpeed's own ds_to_universal (with
    our universal_checkpoint_info) into a temporary folder; the checkpoint itself is not touched."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="growclip-universal-") as tmp:
        out = Path(tmp) / tag_dir.name
        proc = ds_to_universal(tag_dir, out)
        if proc.returncode != 0:
            raise CheckpointError(f"{tag_dir}: ds_to_universal failed: {proc.stderr.strip().splitlines()[-1:]}")
        return full_state_dict(out)


def ds_to_universal(tag_dir: Path, out_dir: Path):
    """Run DeepSpeed's `ds_to_universal` (a subprocess; returns its CompletedProcess). It matches full paths
    as regular expressions and fails on folders named with "(", "+" or the like, so it is handed plain-named
    links to the input and the output folder."""
    import subprocess
    import sys
    import tempfile
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="growclip-links-") as links:
        src, dst = Path(links) / "source", Path(links) / "universal"
        src.symlink_to(Path(tag_dir).resolve(), target_is_directory=True)
        dst.symlink_to(out_dir.resolve(), target_is_directory=True)
        return subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(src), "--output_folder", str(dst)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
