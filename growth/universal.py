"""Reading and writing DeepSpeed universal checkpoints, the format growth works on.

What `ds_to_universal` writes, and what DeepSpeed's universal loading (runtime/base_optimizer.py
`load_hp_checkpoint_state_from_checkpoint_dir`, checkpoint/universal_checkpoint.py) reads:
  TAG/mp_rank_00_model_states.pt    module, param_shapes, lr_scheduler, step counters, client state
  TAG/zero/optimizer_state.pt       loss scaler, clip_grad, param_groups (hyperparameters), ZeRO metadata
  TAG/zero/<param>/fp32.pt          {"param": full fp32 tensor, + how to cut it for TP: "cat_dim",
                                    "sub_param_shape" (fused QKV), "vocab_tensor"}
  TAG/zero/<param>/exp_avg.pt, exp_avg_sq.pt   the same for the Adam moments (absent if ZeRO never made them)
  TAG/zero/<param>/step.pt          the optimizer step, a bare tensor
The loader treats every `*.pt` in a parameter folder as optimizer state, so nothing else may be written there.
The cut keys depend on the parameter's shape (sub_param_shape holds sizes) and exist for new parameters too,
so they are derived afresh from the grown model's universal_checkpoint_info, as ds_to_universal derives them.
Everything is read with torch.load(weights_only=True), with the few DeepSpeed classes these files hold allowed
(pretrain/checkpoint.py safe_globals). A checkpoint a user hands us is checked whole (`find_checkpoint`:
every file DeepSpeed's ds_to_universal would unpickle with weights_only=False, pretrain/checkpoint.py
check_files) before anything reads it; a refused or unreadable file is a GrowthError naming it.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from pretrain import checkpoint as ckpt

from .errors import GrowthError

STATES = ("fp32", "exp_avg", "exp_avg_sq")
OPTIMIZER_STATE = "optimizer_state.pt"


def load(path: Path, safe_globals=()):
    """torch.load(weights_only=True) with DeepSpeed's checkpoint classes (and `safe_globals`) allowed, with an
    error that names the file: refused (a pickle that would run code) or cannot be read (truncated, corrupt)."""
    try:
        return ckpt.load_checked(path, safe_globals, mmap=False)
    except ckpt.CheckpointError as e:
        raise GrowthError(str(e)) from e


def check(tag_dir: Path) -> Path:
    """Every file of the tag folder that DeepSpeed may unpickle, loaded with weights_only=True first
    (pretrain/checkpoint.py check_files); GrowthError naming the first refused or unreadable one."""
    try:
        ckpt.check_files(tag_dir)
    except ckpt.CheckpointError as e:
        raise GrowthError(str(e)) from e
    return tag_dir


def find_checkpoint(path: str | Path) -> Path:
    """The tag folder for a run folder, a checkpoints folder, a tag folder, or a ds_to_universal output root,
    its files checked (`check`): the entry of every growth path (growth.grow, growth.search, in-run growth)."""
    path = Path(path)
    try:
        base, tag = ckpt.resolve(path)
    except ckpt.CheckpointError:
        latest = path / "latest_universal"
        if not latest.is_file():
            raise
        base, tag = path, latest.read_text().strip()
    tag_dir = base / tag
    if not tag_dir.is_dir():
        raise GrowthError(f"{tag_dir}: no such checkpoint tag folder")
    return check(tag_dir)


def to_universal(ds_tag_dir: Path, out_tag_dir: Path) -> Path:
    """Convert a DeepSpeed (ZeRO 1/2) checkpoint with DeepSpeed's own converter, as a user would; its files are
    checked first (`check`; free for files find_checkpoint checked in this process)."""
    check(ds_tag_dir)
    if not list(Path(ds_tag_dir).glob("*zero_pp_rank_*optim_states.pt")):
        raise GrowthError(f"{ds_tag_dir}: no ZeRO optimizer files (a ZeRO-0 save, e.g. of train.optimizer="
                          f"master_adamw), which ds_to_universal cannot convert; growth needs a ZeRO-1/2 checkpoint")
    proc = ckpt.ds_to_universal(ds_tag_dir, out_tag_dir)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise GrowthError(f"{ds_tag_dir}: ds_to_universal failed (corrupt or unsupported checkpoint?):\n  "
                          + "\n  ".join(tail))
    return out_tag_dir


def read_step(tag_dir: Path) -> torch.Tensor | None:
    """The optimizer step stored beside the parameters (all parameters share it)."""
    for p in sorted((tag_dir / "zero").iterdir()):
        if (p / "step.pt").is_file():
            return load(p / "step.pt")
    return None


def load_parameter(tag_dir: Path, name: str) -> dict[str, torch.Tensor]:
    """The full tensors of one parameter, by state name; fp32 must exist, moments may not."""
    from deepspeed.checkpoint.universal_checkpoint import SubparamShape
    folder = tag_dir / "zero" / name
    if not (folder / "fp32.pt").is_file():
        raise GrowthError(f"{folder / 'fp32.pt'}: missing; the universal checkpoint is incomplete")
    out = {}
    for state in STATES:
        if (folder / f"{state}.pt").is_file():
            entry = load(folder / f"{state}.pt", [SubparamShape])
            if not isinstance(entry, dict) or not torch.is_tensor(entry.get("param")):
                raise GrowthError(f"{folder / f'{state}.pt'}: not a universal checkpoint entry (no 'param')")
            out[state] = entry["param"]
    return out


def entry_keys(name: str, shape: torch.Size, uc_info: dict) -> dict:
    """The keys beside 'param' of a parameter's files, by ds_to_universal's rules (merge_tp_slices): the first
    matching category decides the cut, then the vocabulary flag."""
    from deepspeed.checkpoint.universal_checkpoint import SubparamShape

    def match(key):
        return any(re.match(p, name) for p in uc_info.get(key, []))

    sub = next((s for s in uc_info.get("parameter_with_sub_params", [])
                if any(re.match(p, name) for p in s["patterns"])), None)
    if match("tp_replicated_parameter_patterns") or match("parameter_to_average_patterns"):
        keys = {}
    elif match("parameter_with_2_sub_params_cat_dim_0"):
        keys = {"cat_dim": 0, "param_n_sub_params": 2}
    elif sub is not None:
        dim, spec = sub["partition_dim"], sub["shape"][sub["partition_dim"]]
        sizes = tuple(spec) if isinstance(spec, (tuple, list)) else (shape[dim] // spec,) * spec
        full = list(sub["shape"])
        full[dim] = sizes
        keys = {"sub_param_shape": SubparamShape(sub["patterns"], tuple(full), dim)}
    else:
        keys = {"cat_dim": 1 if match("parameter_with_row_parallelism_patterns") else 0}
    if match("vocabulary_parameter_patterns"):
        keys["vocab_tensor"] = True
    return keys


def save_parameter(tag_dir: Path, name: str, tensors: dict[str, torch.Tensor], keys: dict,
                   step: torch.Tensor | None) -> None:
    """Write one parameter's state files (`keys`: from entry_keys) and its step."""
    folder = tag_dir / "zero" / name
    folder.mkdir(parents=True)
    for state, tensor in tensors.items():
        torch.save({**keys, "param": tensor}, folder / f"{state}.pt")
    if step is not None:
        torch.save(step, folder / "step.pt")


def optimizer_state_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    return [LossScaler, DynamicLossScaler, ZeroStageEnum]


def write_optimizer_state(src_tag: Path, dst_tag: Path, group_sizes: list[int]) -> None:
    """The global optimizer state of a universal checkpoint, with the per-parameter alignment padding resized to the
    grown groups."""
    path = src_tag / "zero" / OPTIMIZER_STATE
    save_optimizer_state(load(path, optimizer_state_globals()), dst_tag, group_sizes, str(path))


def save_optimizer_state(sd: dict, dst_tag: Path, group_sizes: list[int], origin: str) -> None:
    """Write `sd` (what ds_to_universal puts in zero/optimizer_state.pt; `origin` names where it came from) for the
    grown groups: the per-parameter alignment padding resized to them."""
    if len(sd.get("param_groups", [])) != len(group_sizes):
        raise GrowthError(f"{origin}: {len(sd.get('param_groups', []))} optimizer parameter groups, the model has "
                          f"{len(group_sizes)}")
    if "param_alignment_paddings" in sd:
        sd = {**sd, "param_alignment_paddings": [[0] * n for n in group_sizes]}
    torch.save(sd, dst_tag / "zero" / OPTIMIZER_STATE)
