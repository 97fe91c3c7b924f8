"""Evaluation during training, called by the trainer every N steps; results go to TensorBoard.

Collective: every rank calls `run` with the same tasks, embeds its share, and the features are gathered over
the default process group (which DeepSpeed has initialised); every rank takes part in the same collectives in
the same order, even when a task's data is missing on some ranks. Rank 0 gets the metrics; the others get {}.
It takes a single-device model: `single_device_model(engine, tp_group)`. The eval draws no numbers from the
global RNG, so training continues exactly as without it.
"""
from __future__ import annotations

import sys

import torch.distributed as dist

from pretrain.model import CLIP

from .data import TaskUnavailable
from .harness import Options, run_task
from .tasks import parse


def single_device_model(engine, tp_group=None, pp_group=None):
    """The model to evaluate. ZeRO 0-2 without tensor or pipeline parallelism: the engine's module itself (every
    rank holds the full weights). ZeRO-3, tp > 1 and/or pp > 1 (pass the groups): a full plain-CLIP copy gathered
    from the partitions, shards and stages (collective: every rank must call it); free it after `run`."""
    module = engine.module
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    pp = dist.get_world_size(pp_group) if pp_group is not None else 1
    if engine.zero_optimization_stage() < 3 and tp == 1 and pp == 1:
        return module
    named = list(module.named_parameters())
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p for _, p in named]):
            named = [(name, p.detach().clone()) for name, p in named]
    from pretrain.parallel.pipeline import full_state

    device = named[0][1].device
    copy = CLIP(module.arch)
    copy.load_state_dict(full_state(named, module.arch.text.vocab, tp_group, pp_group))
    return copy.to(device)


def run(model, tokenizer, transform, tasks: str | list[str], limit: int, rank: int = 0, world: int = 1,
        batch_size: int = 256, data_dir=None) -> dict[str, float]:
    """{"<task>/<metric>": value} on rank 0, {} elsewhere. tasks: names as for `python -m eval --tasks` (a list or
    one comma-separated string). The model's train/eval mode and the global RNG state are left as they were.
    Tasks whose data is missing on any rank are skipped on all, with a warning on rank 0."""
    opt = Options(limit=limit, batch_size=batch_size, rank=rank, world=world, progress=False)
    if data_dir is not None:
        opt.data_dir = data_dir
    out = {}
    for task in parse(tasks):
        try:
            record = run_task(model, tokenizer, transform, task, opt)
        except TaskUnavailable as e:
            if rank == 0:
                print(f"[eval] skipped {task.name}: {e}", file=sys.stderr)
            continue
        if record is not None:
            out.update({f"{task.name}/{k}": float(v) for k, v in record["metrics"].items()})
    return out
