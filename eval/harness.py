"""One task on one model -> one result record with CLIP_benchmark's fields (dataset, task, metrics, language),
plus what we used: samples, skipped items by reason, and the data's provenance (split, split rule, source)."""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from . import linear_probe, retrieval, zeroshot
from .data import EvalDataError, LinearProbe, first
from .tasks import LINEAR_PROBE, RETRIEVAL, ZEROSHOT, Task

EVALUATE = {ZEROSHOT: zeroshot.evaluate, RETRIEVAL: retrieval.evaluate, LINEAR_PROBE: linear_probe.evaluate}


@dataclass
class Options:
    limit: int = 0  # first N samples of each split (0: all)
    batch_size: int = 256
    amp: bool = False  # torch.autocast, as CLIP_benchmark's --amp
    workers: int = 0  # image-decoding DataLoader workers per rank
    rank: int = 0
    world: int = 1
    progress: bool = True
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("GROWCLIP_DATA", "data")))


def run_task(model, tokenizer, transform, task: Task, opt: Options) -> dict | None:
    """Collective when world > 1 (every rank calls it). The record on rank 0, None elsewhere."""
    data = _build_everywhere(task, opt)
    parts = [data.train, data.test] if isinstance(data, LinearProbe) else [data]
    for part in parts:
        first(part, opt.limit)
    was_training = model.training
    model.eval()
    try:
        metrics, samples, skipped = EVALUATE[task.kind](model, tokenizer, transform, data, opt.batch_size, opt.amp,
                                                        opt.rank, opt.world, opt.workers, opt.progress)
    finally:
        model.train(was_training)
    if opt.rank != 0:
        return None
    skipped = sum((part.skipped for part in parts), Counter(skipped))
    return {"dataset": task.name, "task": task.kind, "metrics": metrics, "language": "en", "samples": samples,
            "skipped": dict(sorted(skipped.items())), **parts[-1].info}


def _build_everywhere(task: Task, opt: Options):
    """The task's data, or the same error on every rank: a rank whose node lacks the data must not leave the
    others waiting in a gather."""
    try:
        data, error = task.build(opt.data_dir), None
    except EvalDataError as e:
        data, error = None, e
    if opt.world > 1:
        errors: list = [None] * opt.world
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error
    return data


def summary(record: dict) -> str:
    """One human-readable line per result."""
    m, head = record["metrics"], f"{record['dataset']} ({record['samples']} samples"
    head += f", skipped {record['skipped']})" if record["skipped"] else ")"
    if record["task"] == RETRIEVAL:
        def recalls(kind):
            return "/".join(f"{100 * v:.1f}" for k, v in m.items() if k.startswith(kind))
        return (f"{head} retrieval R@1/5/10: image->text {recalls('text_retrieval')}  "
                f"text->image {recalls('image_retrieval')}")
    p = "lp_" if record["task"] == LINEAR_PROBE else ""
    line = (f"{head} {'linear probe' if p else 'zero-shot'}: top-1 {100 * m[p + 'acc1']:.2f}%  "
            f"top-5 {100 * m[p + 'acc5']:.2f}%  mean per-class recall {100 * m[p + 'mean_per_class_recall']:.2f}%")
    if "transfer_acc1" in m:  # the same images with CLIP_benchmark's prompts instead of the training captions'
        line += f"; CLIP_benchmark prompts (transfer): top-1 {100 * m['transfer_acc1']:.2f}%"
    return line + (f"  (C={m['C']:.3g}, val top-1 {100 * m['val_acc1']:.2f}%)" if p else "")
