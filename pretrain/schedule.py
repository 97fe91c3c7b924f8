"""The learning-rate schedule: warmup, then cosine or warmup-stable-decay (wsd), re-warmed after each growth.

Indexing. The scheduler's position p is the number of optimizer steps taken; the update of trainer step s
(1-based) runs at `lr_at(train, s - 1)`, and metrics.jsonl's record of step s shows `lr_at(train, s)` (the lr
the next update gets: DeepSpeed steps the scheduler after each optimizer step).

- cosine: (p + 1) / warmup for p < warmup, then a cosine from lr to min_lr, reached at p = steps.
- wsd: the same warmup, then lr (stable), then linear from lr at `decay_start` to min_lr at p = steps over the
  last round(decay_frac * steps) positions. A grown model can keep training at full lr until the final decay,
  instead of meeting whatever the cosine has decayed to by its growth step.
- Re-warm: the model grew after step g (a growth history entry's `source_step`, the step its trainer resumes
  from), so the first update of the grown model runs at position g. For p in [g, g + rewarm) the scheduled lr
  is multiplied by (p - g + 1) / (rewarm + 1): the k-th update after the growth (k = 1..rewarm) runs at
  k / (rewarm + 1) of its scheduled lr, and from position g + rewarm on the lr is the scheduled one again.
  Windows of close growths do not compound: the latest growth's (smaller) ramp applies. rewarm = 0 is the
  plain schedule.

Defaults measured (docs/results/growth-pays.md, "Defaults set from these tables"): the growing configs use wsd,
since with the same growth the cosine schedule ended 0.2 held-out loss worse (0.816 against 0.604); re-warm 20
stays, since no re-warm ended within noise of it (0.678 against 0.684).

A resume restores the scheduler's position (DeepSpeed, `load_lr_scheduler_states`), the growth steps come from
the checkpoint's growth history, so the lr sequence is that of an uninterrupted run; `set_lr` then gives the
optimizer the schedule's lr at that position (DeepSpeed restores the optimizer's lr as saved, which after a
growth is the un-re-warmed value of the save before it).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from .config import TrainConfig

KEYS = ("lr", "min_lr", "warmup", "steps", "lr_schedule", "decay_frac")


def _settings(train) -> dict:
    """The schedule's keys of a TrainConfig or of a checkpoint's run_config["train"] dict (missing keys take
    TrainConfig's defaults)."""
    if isinstance(train, dict):
        defaults = TrainConfig()
        return {k: train.get(k, getattr(defaults, k)) for k in KEYS}
    return {k: getattr(train, k) for k in KEYS}


def decay_start(train) -> int:
    """The first position of the final decay: wsd, steps - round(decay_frac * steps); cosine decays from the
    end of the warmup on."""
    t = _settings(train)
    if t["lr_schedule"] == "wsd":
        return int(t["steps"]) - round(float(t["decay_frac"]) * int(t["steps"]))
    return int(t["warmup"])


def _cosine(warmup: int, total: int, lr: float, min_lr: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))) / lr
    return factor


def _wsd(warmup: int, total: int, start: int, lr: float, min_lr: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, total - start))
        return (min_lr + (lr - min_lr) * (1 - progress)) / lr
    return factor


def _factor(train, growth_steps: Iterable[int] = (), rewarm: int = 0) -> Callable[[int], float]:
    """The LambdaLR factor: lr_at(train, p, ...) = train.lr * factor(p)."""
    t = _settings(train)
    lr, min_lr, warmup, total = float(t["lr"]), float(t["min_lr"]), int(t["warmup"]), int(t["steps"])
    if t["lr_schedule"] == "wsd":
        plain = _wsd(warmup, total, decay_start(train), lr, min_lr)
    else:
        plain = _cosine(warmup, total, lr, min_lr)
    grown = sorted({int(g) for g in growth_steps}) if rewarm > 0 else []
    if not grown:
        return plain

    def factor(step: int) -> float:
        last = max((g for g in grown if g <= step), default=None)  # the latest growth's ramp is the smallest
        if last is None or step >= last + rewarm:
            return plain(step)
        return plain(step) * (step - last + 1) / (rewarm + 1)
    return factor


def lr_at(train, step: int, growth_steps: Iterable[int] = (), rewarm: int = 0) -> float:
    """The lr the scheduler gives at position `step` (the lr of trainer step step + 1's update), after the
    growths at `growth_steps` (their source steps) re-warmed over `rewarm` steps each."""
    return float(_settings(train)["lr"]) * _factor(train, growth_steps, rewarm)(step)


def build_scheduler(optimizer, train, growth_steps: Iterable[int] = (), rewarm: int = 0):
    """A LambdaLR over `optimizer` (whose lr is train.lr) giving `lr_at`. The factor is a plain function, so
    the scheduler's state_dict holds only its position: a resume rebuilds the factor from the config and the
    growth history."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _factor(train, growth_steps, rewarm))


def set_lr(scheduler) -> None:
    """Give the optimizer the scheduler's lr at its (restored) position; after an exact resume it is already
    that value, after a growth it starts the re-warm."""
    lrs = [base * f(scheduler.last_epoch) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)


def growth_warning(train, history: list, step: int) -> str | None:
    """A warning when the run starts right after a growth (the last history entry's source step is `step`)
    that falls inside the final decay, where the grown model gets little lr to use its new capacity."""
    if not history or history[-1].get("source_step") != step or step < decay_start(train):
        return None
    move = history[-1].get("move")
    return (f"warning: the growth at step {step}{f' ({move})' if move else ''} falls inside the lr decay phase "
            f"(from step {decay_start(train)}); the grown model trains at a decaying lr. Grow earlier, or use "
            f"train.lr_schedule=wsd with a smaller train.decay_frac")
