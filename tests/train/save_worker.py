"""Three `pretrain/main.py` runs into one out_dir, in one process (WORLD_SIZE=1, gloo), as a job that stops and
is resumed would make them; writes what each left behind to RESULT.json.

    save_worker.py RESULT.json SHARDS TOKENIZER OUT [--mount]

A. train.steps=2, save_every=1, keep_last=2: saves step 1 and step 2.
B. --resume latest, train.steps=3. With --mount (run it under `unshare -m`, as root: the mount is this process's
   own) OUT/checkpoints is a tmpfs, shrunk before B to hold half a checkpoint more: the step-3 save runs out of
   space after step 3's metrics record is written, like a job that dies in its last save. Without --mount B
   completes, and C resumes from step 2 explicitly: the same state, a step-3 record past the resume point.
C. --resume latest (--mount, the tmpfs grown back) or --resume OUT/checkpoints/step00000002, train.steps=3.
Used by tests/train/test_user_errors.py."""
import contextlib
import gc
import io
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.conftest import SMALL_MODEL  # noqa: E402


def run_main(argv: list[str]) -> dict:
    from pretrain.main import main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except BaseException as e:  # noqa: BLE001 - recorded: the test says what was expected
            rc = f"raised {e.__class__.__name__}: {e}"
    from deepspeed.utils import groups
    from megatron.core import parallel_state
    groups.mpu = None  # the next run builds its own groups (pretrain/growth_loop.py close, without an engine)
    parallel_state.destroy_model_parallel()
    gc.collect()
    return {"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue()}


def state(out: Path) -> dict:
    ckpts = out / "checkpoints"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").is_file() else []
    return {"steps": [r["step"] for r in rows], "loss": {r["step"]: r["loss"] for r in rows},
            "latest": (ckpts / "latest").read_text().strip() if (ckpts / "latest").is_file() else None,
            "tags": sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else []}


def mount(ckpts: Path, size: str, remount: bool = False) -> None:
    opts = ["-o", f"remount,size={size}"] if remount else ["-t", "tmpfs", "-o", f"size={size}"]
    subprocess.run(["mount", *opts, "tmpfs", str(ckpts)], check=True)


def main(result: str, shards: str, tokenizer: str, out: str, *flags: str) -> None:
    os.chdir(ROOT)
    out = Path(out)
    use_mount = "--mount" in flags
    common = ["--config", "configs/demo.yaml", "--deepspeed_config", "ds_configs/zero2.json",
              f"data.shards={shards}", f"data.tokenizer={tokenizer}", f"train.out_dir={out}", "train.micro_batch=8",
              "train.log_every=1", "train.warmup=1", "train.save_every=1", "train.keep_last=2", "data.workers=0",
              "data.shuffle_buffer=50", *SMALL_MODEL]
    phases = {}
    if use_mount:
        (out / "checkpoints").mkdir(parents=True)
        mount(out / "checkpoints", "64m")
    phases["A"] = {**run_main([*common, "train.steps=2"]), **state(out)}
    if use_mount:  # room for half a checkpoint more than what is there
        one = sum(f.stat().st_size for f in (out / "checkpoints" / "step00000002").iterdir())
        used = sum(f.stat().st_size for f in (out / "checkpoints").rglob("*") if f.is_file())
        mount(out / "checkpoints", f"{(used + one // 2) // 1024 + 64}k", remount=True)
        phases["checkpoint_bytes"] = one
    phases["B"] = {**run_main([*common, "train.steps=3", "--resume", "latest"]), **state(out)}
    if use_mount:
        mount(out / "checkpoints", "64m", remount=True)
    resume = "latest" if use_mount else str(out / "checkpoints" / "step00000002")
    phases["C"] = {**run_main([*common, "train.steps=3", "--resume", resume]), **state(out)}
    Path(result).write_text(json.dumps(phases, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
