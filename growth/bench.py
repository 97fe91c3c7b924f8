"""Benchmark: grow a ViT-B/16-size CLIP checkpoint with Adam state on the CPU, timed beside ds_to_universal on
the same checkpoint in the same run. `python -m growth.bench [--model configs/models/vit-b-16.yaml]
[--move "vision.layers+=2"] [--work DIR] [--keep]`.

The source is a real 1-process DeepSpeed ZeRO-2 save (one AdamW step, so the moments exist). Timed, each as the
command a user runs (interpreter start included): ds_to_universal (DeepSpeed -> universal), growth from that
universal checkpoint (the grown, reshardable universal checkpoint), and growth straight from the DeepSpeed
checkpoint (conversion included). The target is growth <= 1.5x ds_to_universal. Prints a markdown row for
docs/perf.md.
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.5


def make_checkpoint(model_file: str, run_dir: str) -> None:
    """A single-rank DeepSpeed ZeRO-2 checkpoint after one AdamW step (runs in a spawned process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    import hashlib

    import deepspeed
    import torch

    from pretrain import checkpoint as ckpt
    from pretrain.arch import Architecture
    from pretrain.loss import clip_loss_torch
    from pretrain.model import CLIP
    from pretrain.optim import param_groups
    from pretrain.parallel.groups import init_distributed

    init_distributed()  # gloo, without the /dev/shm-leaking shm op (pretrain/parallel/groups.py)
    arch = Architecture.load(model_file)
    torch.manual_seed(0)
    model = CLIP(arch)
    config = {"train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4),
                                      config=config)
    texts = torch.randint(1, arch.text.vocab - 2, (2, arch.text.context))
    texts[:, 10] = arch.text.vocab - 1
    image, text, scale = engine(torch.randn(2, 3, arch.vision.image_size, arch.vision.image_size), texts)
    engine.backward(clip_loss_torch(image, text, image, text, scale))
    engine.step()
    tokenizer = Path(run_dir) / "tokenizer.model"  # a stand-in: growth copies it and checks its hash only
    tokenizer.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.write_bytes(b"growth benchmark tokenizer stand-in")
    shadow = {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
    client = {"architecture": arch.to_dict(), "step": 1, "data": [], "ema": {"decay": 0.999, "shadow": shadow},
              "tokenizer_sha256": hashlib.sha256(tokenizer.read_bytes()).hexdigest(),
              "layout": {"tp": 1, "pp": 1, "dp": 1}, "growth_history": [], "run_config": {}}
    names = [n for n, _ in model.named_parameters()]
    ckpt.save(engine, Path(run_dir) / "checkpoints", 1, client,
              ckpt.universal_checkpoint_info(names, arch.text.vocab, 1), str(tokenizer))


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "cpu")
    return f"{cpu}, {os.cpu_count()} cores visible (shared), {platform.system()}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="configs/models/vit-b-16.yaml")
    p.add_argument("--move", default="vision.layers+=2")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary one, removed after)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="growth-bench-"))
    try:
        print(f"saving a {args.model} DeepSpeed checkpoint with Adam state in {work} ...", flush=True)
        proc = multiprocessing.get_context("spawn").Process(target=make_checkpoint,
                                                            args=(args.model, str(work / "run")))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit("saving the benchmark checkpoint failed")
        tag = work / "run" / "checkpoints" / "step00000001"
        py = sys.executable
        convert = timed([py, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag),
                         "--output_folder", str(work / "universal" / tag.name)])
        shutil.copyfile(tag / "tokenizer.model", work / "universal" / tag.name / "tokenizer.model")
        grow = timed([py, "-m", "growth.grow", "--from", str(work / "universal"), "--move", args.move,
                      "--out", str(work / "grown"), "--pim-m", "0.9"])
        end_to_end = timed([py, "-m", "growth.grow", "--from", str(work / "run"), "--move", args.move,
                            "--out", str(work / "grown-from-ds"), "--pim-m", "0.9"])
        ratio = grow / convert
        print(f"ds_to_universal {convert:.1f} s | growth from universal {grow:.1f} s (ratio {ratio:.2f}, target "
              f"<= {TARGET_RATIO}) | growth from the DeepSpeed checkpoint {end_to_end:.1f} s")
        print("\n| date | machine | model, move | ds_to_universal | grow (universal in) | ratio | "
              "grow (DeepSpeed in, converts) |\n|---|---|---|---:|---:|---:|---:|")
        print(f"| {datetime.date.today()} | {machine()} | {Path(args.model).stem}, `{args.move}`, PIM m=0.9 | "
              f"{convert:.1f} s | {grow:.1f} s | {ratio:.2f} | {end_to_end:.1f} s |")
        return 0 if ratio <= TARGET_RATIO else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
