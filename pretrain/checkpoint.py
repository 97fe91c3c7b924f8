"""The checkpoint contract: DeepSpeed's `save_checkpoint` plus our client state, written atomically.

Layout of a run: `OUT/checkpoints/<tag>/` (DeepSpeed files + tokenizer.model: the run's tokenizer file, copied as
it is, our SentencePiece model or open_clip's CLIP BPE .txt.gz) and `OUT/checkpoints/latest`.
Client state, under the key `growclip`: architecture, step, data position (one entry per data-parallel rank),
tokenizer sha256 and kind (sentencepiece | clip_bpe), EMA weights, layout and growth history.
`universal_checkpoint_info` sits beside it, so `python -m deepspeed.checkpoint.ds_to_universal` converts the
checkpoint and universal loading reshards it.

Atomicity: DeepSpeed writes into `<tag>.tmp`; after a barrier rank 0 adds the tokenizer, renames the folder
to `<tag>` and replaces `latest` by rename. A crash mid-save leaves only a `.tmp` folder that nothing reads (the
next save removes it). A save that fails (a full disk, a quota) raises CheckpointError naming the folder and
saying "no space left" when that is the cause; `latest` still names the previous checkpoint. With
`train.keep_last N`, rank 0 then deletes the older step tags beyond the N newest (`prune`).

Untrusted files: DeepSpeed reads every checkpoint file with `torch.load(weights_only=False)`, which runs any
code a pickle names. So every file DeepSpeed may read (`checkpoint_files`) is first loaded here with
`weights_only=True` and only the DeepSpeed classes such files hold (`safe_globals`): `check_files`, used by
`--resume` (Trainer, before DeepSpeed starts), `python -m eval` (eval/load.py) and growth (growth/universal.py,
before ds_to_universal). A file that fails is refused with CheckpointError naming it, and runs nothing.

The run's logs agree with its checkpoint: a run that starts at step S (0 for a fresh start, S for a resume)
drops the records past S from `metrics.jsonl` and `eval.jsonl` (`trim_logs`), so each step appears once.
"""
from __future__ import annotations

import errno
import json
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


# ---- untrusted files -------------------------------------------------------------------------------------------
MMAP_ABOVE = 1 << 20  # bytes; a larger file is checked through mmap: its pickle is read, its tensor bytes are not
_checked: set[tuple] = set()  # (path, device, inode, size, mtime) of the files that passed, in this process


def safe_globals() -> list:
    """The classes, beyond tensors and plain containers, that DeepSpeed 0.19 writes into checkpoint files: the loss
    scaler (LossScaler; DynamicLossScaler under fp16) and ZeroStageEnum in every ZeRO optimizer shard,
    fragment_address in the ZeRO-1/2 shards' `param_slice_mappings`, SubparamShape in universal fp32/exp_avg
    files of fused QKV weights. Found by saving ZeRO 0-3 (fp32, bf16), tp=2, pp=2 (ZeRO 0/1, fp32 and bf16) and
    universal checkpoints and listing what `torch.serialization.get_unsafe_globals_in_checkpoint` reports; the
    model-states and layer files need none. Each is plain data: unpickling one builds the object and sets its
    fields, running no code the file chooses."""
    from deepspeed.checkpoint.universal_checkpoint import SubparamShape
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, SubparamShape]


def checkpoint_files(tag_dir: Path) -> list[Path]:
    """Every file of a tag folder that DeepSpeed's loaders, zero_to_fp32 or ds_to_universal may unpickle: the
    `*.pt` files (mp_rank_*_model_states.pt, *zero_pp_rank_*_optim_states.pt incl. bf16_*, layer_*-model_states.pt)
    and, in a universal checkpoint, zero/optimizer_state.pt and zero/<param>/*.pt."""
    tag_dir = Path(tag_dir)
    return sorted(p for pattern in ("*.pt", "zero/*.pt", "zero/*/*.pt") for p in tag_dir.glob(pattern))


def describe_load_error(path: Path, e: BaseException) -> str:
    """One line for a file torch.load(weights_only=True) did not take: a refused pickle (it names a global that
    a checkpoint never holds, e.g. a function it would call) or an unreadable (truncated, corrupt) file."""
    text = str(e)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if "Weights only load failed" in text:
        what = f" (it names {unsafe.group(1)})" if unsafe else ""
        return (f"{path}: refused: its pickle holds more than tensors and DeepSpeed's checkpoint classes{what}; "
                f"loading it could run code, so it is not loaded. Use checkpoints only from sources you trust")
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{path}: cannot be read, truncated or corrupt? ({e.__class__.__name__}: {first})"


def load_checked(path: Path, extra_globals=(), mmap: bool | None = None, deepspeed_classes: bool = True):
    """torch.load(weights_only=True) with DeepSpeed's checkpoint classes (unless deepspeed_classes=False: a plain
    state dict, read without importing DeepSpeed) and `extra_globals` allowed; CheckpointError naming the file
    (describe_load_error) otherwise. mmap None: for files over MMAP_ABOVE bytes."""
    path = Path(path)
    try:
        if mmap is None:
            mmap = path.stat().st_size > MMAP_ABOVE
        allowed = [*(safe_globals() if deepspeed_classes else []), *extra_globals]
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: missing") from e
    except Exception as e:  # noqa: BLE001 - any unpickling failure: a refused or corrupt file, named
        raise CheckpointError(describe_load_error(path, e)) from e


def check_files(tag_dir: Path, rank: int = 0, world: int = 1) -> int:
    """Load every file of `checkpoint_files(tag_dir)` (this rank's share: every world-th from `rank`) with
    weights_only=True; the first that fails raises CheckpointError naming it. Returns how many were checked.

    Cost: a file over MMAP_ABOVE is mapped, not read: its pickle (names, shapes, small values) is parsed, its
    tensor bytes are not touched. Measured on the CPU (page cache warm): the tiny test checkpoints (ZeRO 0-3,
    tp/pp 2; 8-12 MB in 1-10 files) 20-65 ms, the demo's ZeRO-2 save (32 MB, 3 files) 40 ms, a grown universal
    checkpoint of the tiny model (250 small files) 0.3 s; a 1 GiB tensor file with a cold cache 0.04-0.08 s
    with mmap against 1.2-1.7 s read whole. A file that passed in this process (same path, inode, size and
    mtime) is not checked again, so the paths that check twice (eval, then zero_to_fp32; growth, then
    ds_to_universal) pay once."""
    files = checkpoint_files(tag_dir)[rank::world]
    for f in files:
        st = f.stat()
        key = (str(f.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _checked:
            continue
        load_checked(f)
        _checked.add(key)
    return len(files)


def check_files_collective(tag_dir: Path) -> None:
    """check_files over the ranks of the job, each taking its share; every rank raises the same CheckpointError
    (the first failing file's) or none. Collective (deepspeed.comm, initialised)."""
    import deepspeed.comm as dist
    error = None
    try:
        check_files(tag_dir, dist.get_rank(), dist.get_world_size())
    except CheckpointError as e:
        error = str(e)
    errors = [None] * dist.get_world_size()
    dist.all_gather_object(errors, error)
    first = next((e for e in errors if e), None)
    if first:
        raise CheckpointError(first)


# ---- writing -----------------------------------------------------------------------------------------------------
LOW_SPACE = 64 << 20  # bytes; a write that fails with less free than this on its filesystem failed for want of it
TAG_RE = re.compile(r"step(\d+)")
LATEST_RE = re.compile(r"(?!\.\.?$)[\w.+-]{1,200}")  # what `latest` may name: one plain folder name


def check_out_dir(out_dir: str | Path) -> None:
    """train.out_dir can hold the run: a folder, or a path whose nearest existing folder lets one be made, in
    which a file can be written. One-line errors (ConfigError) for a file in the way, a read-only filesystem,
    no permission, a full disk. Called before any work (pretrain/main.py). The probe is a uniquely named
    temporary folder (every rank makes its own) with a 4 KiB file in it, removed at once; out_dir itself is not
    created here. Root ignores permission bits, so for root only a read-only filesystem, a file in the path or
    a full disk fails here."""
    import tempfile

    from .config import ConfigError
    if "\0" in str(out_dir):  # pathlib's checks read such a path as missing; the first mkdir would raise ValueError
        raise ConfigError(f"train.out_dir={str(out_dir)!r} holds a NUL character; set train.out_dir to a folder name")
    out = Path(out_dir).absolute()
    try:
        for p in (out / "checkpoints", out, *out.parents):
            if p.exists() and not p.is_dir():
                what = "is" if p == out else "is inside"
                raise ConfigError(f"train.out_dir={out_dir} {what} a file ({p}), not a folder; set train.out_dir to "
                                  f"a folder")
        where = next(p for p in (out, *out.parents) if p.is_dir())
        probe = Path(tempfile.mkdtemp(prefix=".growclip-write-test-", dir=where))
        try:
            with open(probe / "probe", "wb") as f:
                f.write(b"\0" * 4096)
                f.flush()
                os.fsync(f.fileno())
        finally:
            shutil.rmtree(probe, ignore_errors=True)
    except OSError as e:
        reason = {errno.EROFS: "is on a read-only filesystem", errno.EACCES: "is not writable (permission denied)",
                  errno.EPERM: "is not writable (permission denied)", errno.ENOSPC: "has no space left on device",
                  errno.EDQUOT: "is over its disk quota"}.get(e.errno, f"cannot be written ({e.strerror or e})")
        raise ConfigError(f"train.out_dir={out_dir} {reason}{f' ({e.filename})' if e.filename else ''}; "
                          f"set train.out_dir to a writable folder") from e


def _failed_write(folder: Path, ckpt_dir: Path, e: BaseException) -> CheckpointError:
    """The error of a save that failed while writing `folder`: "no space left" when the filesystem is full (an
    ENOSPC, or torch's stream writer failing with under LOW_SPACE bytes free: it reports no errno), else the
    cause; either way it says which checkpoint stays `latest`."""
    chain, x = [], e
    while x is not None and len(chain) < 10:
        chain.append(x)
        x = x.__cause__ or x.__context__
    code = next((x.errno for x in chain if isinstance(x, OSError) and x.errno), None)
    try:
        free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
    except (OSError, StopIteration):
        free = None
    latest = ckpt_dir / "latest"
    kept = (f"{latest} still names {latest.read_text().strip()}" if latest.is_file()
            else "there is no earlier checkpoint")
    cause = f"{e.__class__.__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    if code == errno.ENOSPC or (code is None and free is not None and free < LOW_SPACE):
        return CheckpointError(f"no space left on device while saving the checkpoint {folder} ({free} bytes free; "
                               f"{cause}); the save is incomplete and {kept}. Free space (train.keep_last N keeps "
                               f"only the newest checkpoints), then --resume latest")
    if code == errno.EDQUOT:
        return CheckpointError(f"disk quota exceeded while saving the checkpoint {folder} ({cause}); {kept}")
    return CheckpointError(f"saving the checkpoint {folder} failed ({cause}); {kept}")


def prune(ckpt_dir: Path, keep_last: int, saved: str) -> list[Path]:
    """train.keep_last: delete the step tags older than the one just `saved` beyond the `keep_last` newest (by
    step, `saved` counted), never the tag `latest` names. Tags past `saved` (left by a run that went further
    before this one resumed from an earlier step) are not touched. Returns the deleted folders. Rank 0, after
    `latest` names `saved`."""
    if keep_last <= 0:
        return []
    latest_file = ckpt_dir / "latest"
    latest = latest_file.read_text().strip() if latest_file.is_file() else saved
    limit = int(TAG_RE.fullmatch(saved).group(1))
    tags = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir()
                  if p.is_dir() and (m := TAG_RE.fullmatch(p.name)) and int(m.group(1)) <= limit)
    doomed = [p for _, p in tags[:-keep_last] if p.name not in (latest, saved)]
    for p in doomed:
        try:
            shutil.rmtree(p)
        except OSError as e:
            print(f"warning: train.keep_last: could not delete {p} ({e})", flush=True)
    return doomed


def trim_logs(out_dir: Path, step: int) -> dict[str, int]:
    """Drop the records after `step` from OUT/metrics.jsonl and OUT/eval.jsonl (and a line a crash cut short),
    each rewritten atomically (a temporary file, then a rename): a run that starts at `step` writes those steps
    again. Returns {file name: records dropped} for the files that changed. Rank 0, before training."""
    dropped = {}
    for name in ("metrics.jsonl", "eval.jsonl"):
        path = Path(out_dir) / name
        if not path.is_file():
            continue
        keep, n = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                past = isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step
            except json.JSONDecodeError:
                past = bool(line.strip())
            if past:
                n += 1
            elif line.strip():
                keep.append(line + "\n")
        if n:
            _write_atomic(path, "".join(keep))
            dropped[name] = n
    return dropped


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(engine, ckpt_dir: str | Path, step: int, client: dict, uc_info: dict, tokenizer_path: str,
         keep_last: int = 0) -> Path:
    """Collective: every rank calls it. Returns the final tag folder. A failed write raises CheckpointError
    (`_failed_write`) on the rank that saw it; `latest` is untouched."""
    import deepspeed.comm as dist

    ckpt_dir = Path(ckpt_dir)
    tag = f"step{step:08d}"
    final = ckpt_dir / tag
    tmp_tag = tag + ".tmp"
    if dist.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob("step*.tmp"):  # this save's, and those of saves that crashed or failed
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, save_latest=False,
                               client_state={CLIENT_KEY: client, "universal_checkpoint_info": uc_info})
    except Exception as e:  # noqa: BLE001 - C++ stream errors included: say what it means, name the folder
        raise _failed_write(ckpt_dir / tmp_tag, ckpt_dir, e) from e
    dist.barrier()
    _test_pause_in_save(ckpt_dir / tmp_tag, dist.get_rank())
    if dist.get_rank() == 0:
        try:
            shutil.copyfile(tokenizer_path, ckpt_dir / tmp_tag / "tokenizer.model")
            if final.exists():  # a re-run of the same step: keep the new one, never a half-written mix
                shutil.rmtree(final)
            os.replace(ckpt_dir / tmp_tag, final)
            _write_atomic(ckpt_dir / "latest", tag)
        except OSError as e:
            raise _failed_write(ckpt_dir / tmp_tag, ckpt_dir, e) from e
        prune(ckpt_dir, keep_last, tag)
    dist.barrier()
    return final


PAUSE_ENV = "GROWCLIP_TEST_PAUSE_IN_SAVE"
PAUSE_MARKER = "GROWCLIP_TEST_PAUSE_IN_SAVE:"


def _test_pause_in_save(tmp_dir: Path, rank: int) -> None:
    """Test-only (tests/faults.py): with GROWCLIP_TEST_PAUSE_IN_SAVE=SECONDS every rank sleeps after DeepSpeed has
    written `<tag>.tmp` and before rank 0 renames it, and rank 0 first prints a PAUSE_MARKER line, so a kill can
    be made to land inside the save. Unset: nothing."""
    seconds = os.environ.get(PAUSE_ENV)
    if not seconds:
        return
    import time
    if rank == 0:
        print(f"\n{PAUSE_MARKER} {tmp_dir} written, pausing {seconds} s before the rename", flush=True)
    time.sleep(float(seconds))


def resolve(path: str | Path) -> tuple[Path, str]:
    """(load_dir, tag) for a run folder, a checkpoints folder or a tag folder. Clear errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    for base in (path / "checkpoints", path):
        latest = base / "latest"
        if latest.is_file():
            tag = latest.read_bytes().decode("utf-8", errors="replace").strip()
            if not LATEST_RE.fullmatch(tag):  # a folder name beside it, never a path ('/etc', '..') or garbage
                raise CheckpointError(f"{latest} names {tag[:80]!r}, not a checkpoint tag (a folder name in {base})")
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


def read_model_states(tag_dir: Path) -> dict:
    """The model-states file (module, param_shapes, our client state), read without DeepSpeed (weights_only=True:
    tensors, plain containers, safe_globals)."""
    f = tag_dir / MODEL_STATES
    if not f.is_file():
        raise CheckpointError(f"{tag_dir}: missing {MODEL_STATES}")
    sd = load_checked(f, mmap=False)
    if not isinstance(sd, dict) or CLIENT_KEY not in sd:
        raise CheckpointError(f"{f}: no '{CLIENT_KEY}' client state; not a GrowCLIP checkpoint")
    check_client(sd[CLIENT_KEY], f)
    return sd


CLIENT_TYPES = {"architecture": dict, "step": int, "tokenizer_sha256": str}  # required
CLIENT_OPTIONAL = {"ema": dict, "growth_history": list, "run_config": dict, "data": (list, dict)}


def check_client(client, f: Path) -> None:
    """The client state's shape, so that a damaged or hand-edited one is one CheckpointError naming the key rather
    than a KeyError or AttributeError somewhere in the trainer, eval or growth."""
    if not isinstance(client, dict):
        raise CheckpointError(f"{f}: the '{CLIENT_KEY}' client state is a {type(client).__name__}, not a mapping")
    for key, kind in {**CLIENT_TYPES, **CLIENT_OPTIONAL}.items():
        if key not in client and key in CLIENT_TYPES:
            raise CheckpointError(f"{f}: the client state has no '{key}'; not a complete GrowCLIP checkpoint")
        v = client.get(key)
        if key in client and (not isinstance(v, kind) or isinstance(v, bool)) and not (v is None and key == "ema"):
            raise CheckpointError(f"{f}: client state '{key}' is {v!r:.60}, not a {getattr(kind, '__name__', kind)}")
    if not all(isinstance(h, dict) for h in client.get("growth_history") or []):
        raise CheckpointError(f"{f}: client state 'growth_history' holds a non-mapping entry")


def read_client_state(tag_dir: Path) -> dict:
    return read_model_states(tag_dir)[CLIENT_KEY]


def check_param_order(tag_dir: Path, states: dict, groups: list[list[str]]) -> None:
    """A ZeRO checkpoint's optimizer state is flat per group, in the order its `param_shapes` lists: loaded into an
    optimizer whose groups hold the same parameters in another order, values land in the wrong parameters. Compare
    the names both sides hold (a pipeline stage holds a share), group by group; universal checkpoints load by name
    and need no check. Checkpoints written before the groups were aligned (pretrain.optim.named_groups) list
    logit_scale first in the no-decay group."""
    saved = states.get("param_shapes")
    if not isinstance(saved, list) or not all(isinstance(g, dict) for g in saved):
        return
    for i, (theirs, ours) in enumerate(zip(saved, groups)):
        common = set(theirs) & set(ours)
        theirs, ours = [n for n in theirs if n in common], [n for n in ours if n in common]
        if theirs != ours:
            first = next(k for k, (a, b) in enumerate(zip(theirs, ours)) if a != b)
            raise CheckpointError(
                f"{tag_dir / MODEL_STATES}: optimizer group {i} holds the parameters in another order than this "
                f"version builds ({theirs[first]} where {ours[first]} is now; written before the groups were "
                f"aligned, see docs/perf.md); its ZeRO state would load into the wrong parameters. Convert it to a "
                f"universal checkpoint, which loads by name: python -m deepspeed.checkpoint.ds_to_universal "
                f"--input_folder {tag_dir} --output_folder U/{tag_dir.name}, then --resume U/{tag_dir.name}")


def load_universal_tensor(path: Path) -> torch.Tensor:
    """One tensor of a universal checkpoint; its metadata may hold DeepSpeed's SubparamShape (fused QKV)."""
    return load_checked(path, mmap=False)["param"]


def full_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """fp32 full weights of a DeepSpeed (ZeRO 0-3) or universal checkpoint, canonical names."""
    tag_dir = Path(tag_dir)
    if is_universal(tag_dir):
        return {p.name: load_universal_tensor(p / "fp32.pt") for p in sorted((tag_dir / "zero").iterdir())
                if p.is_dir()}
    check_files(tag_dir)  # zero_to_fp32 and ds_to_universal unpickle with weights_only=False
    zero_files = list(tag_dir.glob("*zero_pp_rank_*optim_states.pt"))
    if not zero_files and list(tag_dir.glob("layer_*-model_states.pt")):
        return _pipeline_layers(tag_dir)
    if (tag_dir / "mp_rank_01_model_states.pt").is_file():  # TP and/or PP pieces: merge with DeepSpeed's tool
        return _via_universal(tag_dir)
    if zero_files:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        try:
            return dict(get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name))
        except (ValueError, KeyError, IndexError, RuntimeError) as e:  # a shard missing, shapes that do not add up
            first = (str(e).strip().splitlines() or [""])[0]
            raise CheckpointError(f"{tag_dir}: DeepSpeed's zero_to_fp32 cannot merge it ({e.__class__.__name__}: "
                                  f"{first[:200]})") from None
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
    links to the input and the output folder. It unpickles with weights_only=False: every file is checked first
    (check_files; CheckpointError naming a refused or unreadable file)."""
    import subprocess
    import sys
    import tempfile
    check_files(tag_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="growclip-links-") as links:
        src, dst = Path(links) / "source", Path(links) / "universal"
        src.symlink_to(Path(tag_dir).resolve(), target_is_directory=True)
        dst.symlink_to(out_dir.resolve(), target_is_directory=True)
        return subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                               str(src), "--output_folder", str(dst)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
