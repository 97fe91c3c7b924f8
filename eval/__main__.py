"""Evaluate a checkpoint: zero-shot classification, retrieval and linear probe, as CLIP_benchmark does.

    python -m eval --checkpoint PATH --tasks fashion_mnist,mnist,openclipart_retrieval [--out results.json]
    torchrun --nproc_per_node N -m eval ...   # each rank embeds its share of every task; rank 0 reports

Exit status 2 with one clear line for bad input (unknown task, bad checkpoint, class names that do not fit);
tasks whose data is not fetched are skipped with the command that fetches it.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain.arch import ArchitectureError
from pretrain.checkpoint import CheckpointError

from .data import EvalDataError, TaskUnavailable
from .harness import Options, run_task, summary
from .load import load_checkpoint
from .tasks import BUILTIN, GENERIC, parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run folder, DeepSpeed/universal checkpoint, OpenCLIP export")
    p.add_argument("--tasks", default="fashion_mnist", help=f"comma list of {', '.join(BUILTIN)}; or {GENERIC}")
    p.add_argument("--out", default=None, help="results JSON (a list of CLIP_benchmark-style records)")
    p.add_argument("--weights", default="live", choices=["live", "ema"])
    p.add_argument("--tokenizer", default=None,
                   help="SentencePiece .model or CLIP BPE vocabulary (needed for a bare OpenCLIP state dict)")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N samples of each split")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="image-decoding workers per rank")
    p.add_argument("--amp", action="store_true", help="torch.autocast (CLIP_benchmark's default; off here)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-dir", type=Path, default=Options().data_dir, help="DATA of scripts/fetch_data.sh")
    p.add_argument("--classnames", default=None, help="class-name file (JSON list or one per line) for classification:")
    p.add_argument("--templates", default=None, help="template file, each with {c}, for classification:")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    device = args.device
    if world > 1:
        if device == "cuda":
            device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
            torch.cuda.set_device(device)  # NCCL's object gathers use the current device
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    opt = Options(limit=args.limit, batch_size=args.batch_size, amp=args.amp, workers=args.workers, rank=rank,
                  world=world, data_dir=args.data_dir)
    try:
        tasks = parse(args.tasks, args.classnames, args.templates)
        loaded = load_checkpoint(args.checkpoint, args.weights, device, args.tokenizer)
        results = []
        for task in tasks:
            try:
                record = run_task(loaded.model, loaded.tokenizer, loaded.transform, task, opt)
            except TaskUnavailable as e:
                if rank == 0:
                    print(f"SKIPPED {task.name}: {e}", file=sys.stderr)
                continue
            if rank == 0:
                record = {**record, "model": "growclip", "pretrained": str(loaded.path), "step": loaded.step,
                          "weights": args.weights, "format": loaded.format, "architecture": loaded.arch.to_dict()}
                results.append(record)
                print(summary(record) + (f"  [step {loaded.step}]" if loaded.step is not None else ""))
    except (EvalDataError, CheckpointError, ArchitectureError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if world > 1:
            dist.destroy_process_group()
    if rank == 0 and args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
