"""In-process growth: train to each `growth.at_steps` step, save, grow that checkpoint (rank 0, with
`growth.grow_checkpoint`), tear the engine and process groups down, and go on from the grown checkpoint at the
step's (tp, pp) on the same ranks (dp = world / (tp * pp)), until train.steps.

Each segment is an ordinary Trainer run with `train.stop_after` at the next growth step (the lr schedule stays
that of train.steps), and each restart an ordinary resume: the step counter, data position, lr schedule and EMA
travel in the checkpoint, so metrics.jsonl stays one record. A growth step counts as taken when the checkpoint's
growth_history holds an entry from that source step, so `--resume` skips the growths already taken, and the
layout of a step is parallel.* before the first growth and growth.tp/pp[i] after step at_steps[i]. Every move is
checked against the architecture and layout it will meet before the first step.

This is the one module of pretrain/ that imports growth/ (besides config.py's check of the move syntax).
"""
from __future__ import annotations

import dataclasses
import gc
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from growth.errors import GrowthError
from growth.hook import grow_checkpoint
from growth.pim import PIM
from growth.space import check_growth, target_architecture, validate_layout

from . import checkpoint as ckpt
from .arch import Architecture
from .config import ConfigError, RunConfig
from .parallel.layout import Layout, LayoutError
from .trainer import Trainer, check_kernel_head_dims, uses_triton


@dataclass(frozen=True)
class GrowthStep:
    index: int  # position in growth.at_steps, for messages that name the key
    step: int
    moves: str
    tp: int
    pp: int


def growth_steps(cfg: RunConfig) -> list[GrowthStep]:
    """One entry per growth.at_steps value; without growth.tp/pp a step keeps the layout before it."""
    g, tp, pp, steps = cfg.growth, cfg.parallel.tp, cfg.parallel.pp, []
    for i, (step, moves) in enumerate(zip(g.at_steps, g.moves, strict=True)):
        tp, pp = (g.tp[i] if g.tp else tp), (g.pp[i] if g.pp else pp)
        steps.append(GrowthStep(i, step, moves, tp, pp))
    return steps


def resume_plan(cfg: RunConfig, client: dict) -> tuple[list[GrowthStep], tuple[int, int]]:
    """The growth steps still to take, and the (tp, pp) to start at: that of the last growth the checkpoint's
    growth_history holds (one from the same source step), else parallel.*."""
    taken = {h.get("source_step") for h in client.get("growth_history", [])}
    steps = growth_steps(cfg)
    done = [g for g in steps if g.step in taken]
    layout = (done[-1].tp, done[-1].pp) if done else (cfg.parallel.tp, cfg.parallel.pp)
    return [g for g in steps if g.step not in taken], layout


def pim_of(cfg: RunConfig) -> PIM:
    """growth.pim_*; an unset one takes growth/pim.py's default, which lives only there."""
    g = cfg.growth
    return PIM(**{k: v for k, v in (("m", g.pim_m), ("source", g.pim_source), ("seed", g.pim_seed)) if v is not None})


def close(trainer: Trainer) -> None:
    """Release what a Trainer holds process-wide, so the next one builds its own: the engine (optimizer hooks,
    ZeRO buffers), DeepSpeed's reference to our mpu and megatron-core's process groups. The caller drops its
    references to the trainer and collects garbage after."""
    from deepspeed.utils import groups
    from megatron.core import parallel_state

    dist.barrier()
    trainer.engine.destroy()
    trainer.engine = None
    groups.mpu = None
    parallel_state.destroy_model_parallel()


class GrowingRun:
    """A run that grows at growth.at_steps; without growth steps, exactly `Trainer(cfg, ...).train()`."""

    def __init__(self, cfg: RunConfig, ds_config: dict, resume: str | None = None):
        self.cfg, self.ds_config = cfg, ds_config
        self.out = Path(cfg.train.out_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        # the checkpoint to grow first, when the run resumes at a growth step not yet taken
        self.source = ckpt.resume_dir(cfg.train.out_dir, resume) if cfg.growth.at_steps else None
        client = ckpt.read_client_state(self.source) if self.source else {}
        self.pending, layout = resume_plan(cfg, client)
        self.pim = pim_of(cfg)
        arch = Architecture.from_dict(client["architecture"]) if client else cfg.model
        self._check_plan(arch, client.get("step", 0))
        self.trainer = Trainer(self._segment(*layout, self._next_stop()), ds_config, resume=resume)

    def _check_plan(self, arch: Architecture, start: int) -> None:
        """Every pending move against the architecture and layout it will meet, before any training."""
        zero_stage = self.ds_config.get("zero_optimization", {}).get("stage", 0)
        if self.pending and zero_stage == 3:
            raise ConfigError("growth.at_steps: growth reads the model-states file of a ZeRO 0-2 save, which ZeRO-3 "
                              "does not write (nor can a run resume from it); use ds_configs/zero1.json or zero2.json")
        for g in self.pending:
            key = f"growth.at_steps[{g.index}]={g.step}"
            if g.step < start:
                raise ConfigError(f"{key}: the run resumes at step {start}, past this growth step, and its "
                                  f"checkpoint's growth_history has no growth from it")
            if (self.out / "grown" / f"step{g.step}").exists():
                raise ConfigError(f"{key}: {self.out / 'grown' / f'step{g.step}'} exists from an earlier attempt; "
                                  f"resume from it (--resume {self.out / 'grown' / f'step{g.step}'}) or remove it")
            try:
                layout = Layout.for_world(self.world, g.tp, g.pp)
            except LayoutError as e:
                raise ConfigError(f"growth.tp/growth.pp[{g.index}] (tp={g.tp}, pp={g.pp}): {e}") from e
            try:
                grown, _ = target_architecture(arch, g.moves)
                check_growth(arch, grown)
                validate_layout(grown, layout, zero_stage)
                if uses_triton(self.cfg):
                    check_kernel_head_dims(grown)
            except (GrowthError, ConfigError) as e:
                raise ConfigError(f"growth.moves[{g.index}] ({g.moves!r} at step {g.step}, tp={g.tp}, "
                                  f"pp={g.pp}): {e}") from e
            arch = grown

    def _next_stop(self) -> int:
        """stop_after of the next segment: the next growth step, or the user's train.stop_after if sooner."""
        ends = [s for s in (self.pending[0].step if self.pending else 0, self.cfg.train.stop_after) if s]
        return min(ends, default=0)

    def _segment(self, tp: int, pp: int, stop_after: int) -> RunConfig:
        return dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, stop_after=stop_after),
                                   parallel=dataclasses.replace(self.cfg.parallel, tp=tp, pp=pp))

    def train(self) -> None:
        stop_after = self.cfg.train.stop_after
        while self.pending:
            g = self.pending[0]
            if self.trainer.step < g.step:  # else: resumed from the pre-growth save of this very step
                self.trainer.train()
                self.source = Path(*ckpt.resolve(self.out))
            if self.trainer.step < g.step or (stop_after and self.trainer.step >= stop_after):
                return  # stopped by train.stop_after; a later job resumes, and grows first if this step is due
            grown = self._grow(g)
            self.pending.pop(0)
            trainer, self.trainer = self.trainer, None
            close(trainer)
            del trainer
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.trainer = Trainer(self._segment(g.tp, g.pp, self._next_stop()), self.ds_config, resume=str(grown))
        self.trainer.train()

    def _grow(self, g: GrowthStep) -> Path:
        """Rank 0 grows the saved checkpoint while the others wait; every rank gets the grown folder or the error."""
        out = self.out / "grown" / f"step{g.step}"
        answer: list = [None]
        if dist.get_rank() == 0:
            try:
                grow_checkpoint(self.source, g.moves, out, layout=Layout.for_world(self.world, g.tp, g.pp),
                                pim=self.pim)
            except (GrowthError, ckpt.CheckpointError) as e:
                answer = [str(e)]
        dist.broadcast_object_list(answer, src=0)
        if answer[0] is not None:
            raise GrowthError(f"growth.moves[{g.index}] at step {g.step}: {answer[0]}")
        return out
