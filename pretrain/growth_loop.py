"""The run driver: train, and at each event step grow the model and/or let more data in, then go on.

Events, all at step boundaries, each after a save:
- a written growth (`growth.mode: steps`): after step `growth.at_steps[i]`, grow by `growth.moves[i]` onto
  `growth.tp/pp[i]` (rank 0, `growth.grow_checkpoint`);
- a data stage (`data.stages`, `data.stage_steps`): after step `stage_steps[i]` the run reads stage i+1;
- the data grew (`data.refresh_every` re-reads a growing manifest in the trainer, which stops once
  |D| >= growth.data_ratio x the size at the last growth).
With `growth.mode: auto`, a stage arrival or a data growth whose ratio g = |D_t| / |D at the last growth| is at
least `growth.data_ratio` runs the search (growth/auto.py, on every rank): the winner is grown onto the
layout it needs, or the growth is skipped with the reason when the budget admits no candidate.

Each segment is an ordinary Trainer run with `train.stop_after` at the next event step (the lr schedule stays
that of train.steps), and each restart an ordinary resume on the same ranks: the step counter, data position,
lr schedule and EMA travel in the checkpoint, so metrics.jsonl stays one record. A growth counts as taken when
the checkpoint's growth_history holds an entry from that source step; `--resume` skips those, starts at the
checkpoint's layout, and reads the stage of its step. A run resumed from the pre-growth save of a step whose
grown checkpoint `OUT/grown/step<N>` was written (a stop between the growth and the next save) resumes from
that grown checkpoint by itself. Written moves are checked against the architecture and layout they will meet
before the first step.

This is the one module of pretrain/ that imports growth/ (besides config.py's check of the move syntax).
"""
from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from growth.candidates import Budget
from growth.errors import GrowthError
from growth.hook import clear_stale_work, grow_checkpoint, grown_client, history_entry, prepare
from growth.live import grow_live, live_reason, pause_for_test
from growth.pim import PIM
from growth.search import SearchConfig, reference_samples
from growth.space import check_growth, target_architecture, validate_layout
from growth.summary import table

from . import checkpoint as ckpt
from .arch import Architecture
from .config import ConfigError, RunConfig
from .data.manifest import StageError, count_samples, load_stages
from .parallel.groups import destroy_groups
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
    """The written growth steps still to take, and the (tp, pp) to start at: that of the last growth the
    checkpoint's growth_history holds (one from the same source step), else parallel.*."""
    taken = {h.get("source_step") for h in client.get("growth_history", [])}
    steps = growth_steps(cfg)
    done = [g for g in steps if g.step in taken]
    layout = (done[-1].tp, done[-1].pp) if done else (cfg.parallel.tp, cfg.parallel.pp)
    return [g for g in steps if g.step not in taken], layout


def pim_of(cfg: RunConfig) -> PIM:
    """growth.pim_*; an unset one takes growth/pim.py's default, which lives only there."""
    g = cfg.growth
    keys = (("m", g.pim_m), ("source", g.pim_source), ("seed", g.pim_seed), ("inherit", g.pim_inherit),
            ("split", g.symmetry_split), ("noise", g.symmetry_noise), ("depth_init", g.depth_init))
    return PIM(**{k: v for k, v in keys if v is not None})


def search_of(cfg: RunConfig) -> SearchConfig:
    """growth.* search settings; unset ones take growth/search.py's defaults."""
    g = cfg.growth
    keys = ("candidates", "proxy_steps", "proxy_batch", "heldout_batches", "penalty", "eval_task", "target_ratio",
            "noise_margin", "always_grow")
    return SearchConfig(**{k: getattr(g, k) for k in keys if getattr(g, k) is not None}, seed=cfg.train.seed)


def budget_of(cfg: RunConfig, zero_stage: int) -> Budget:
    from kernels.attention import MAX_HEAD_DIM
    g = cfg.growth
    return Budget(max_gflops=g.max_gflops, max_params=g.max_params, max_mem_gb=g.max_mem_gb,
                  max_head_dim=MAX_HEAD_DIM if uses_triton(cfg) else None,
                  micro_batch=cfg.train.micro_batch, zero_stage=zero_stage,
                  dimensions=tuple(g.dimensions) or None, shared=g.shared_encoder)


def close(trainer: Trainer) -> None:
    """Release what a Trainer holds process-wide, so the next one builds its own: the engine (optimizer hooks,
    ZeRO buffers) and every process group but the default one (megatron-core's and DeepSpeed's references
    included; pretrain/parallel/groups.py). The caller drops its references to the trainer and collects garbage
    after."""
    dist.barrier()
    trainer.engine.destroy()
    trainer.engine = None
    dist.barrier()  # no rank still uses a group when they go
    destroy_groups()


def grown_after_crash(out: Path, client: dict, latest: bool = False) -> Path | None:
    """The grown checkpoint a resume goes on from instead of `client`'s checkpoint, if any. A grown checkpoint is
    complete (it is written by rename) and holds the step it grew at. Without `latest`: OUT/grown/step<N> when the
    run resumes from the pre-growth save of step N (a stop between the growth and the next save). With `latest`
    (`--resume latest`): the newest OUT/grown/step<K>, K >= the checkpoint's step (0 without one), whose history
    continues the checkpoint's (a live growth writes no save before it, so a stop after it leaves the last save
    older than the grown checkpoint)."""
    step = client.get("step", 0)
    taken = [h.get("source_step") for h in client.get("growth_history", [])]
    found = []
    for folder in (out / "grown").glob("step*") if (out / "grown").is_dir() else ():
        k = folder.name[len("step"):]
        if not k.isdigit() or int(k) < step or (int(k) != step and not latest) or int(k) in taken:
            continue
        if not (folder / "latest").is_file() or (not client and not latest):
            continue
        tag = ckpt.resume_dir(folder, str(folder))
        history = [h.get("source_step") for h in ckpt.read_client_state(tag).get("growth_history", [])]
        if history and history[-1] == int(k) and history[:len(taken)] == taken:
            found.append((int(k), tag))
    if not found:
        return None
    k, tag = max(found)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"resuming from {tag}: the growth at step {k} was written before the run stopped", flush=True)
    return tag


class GrowingRun:
    """A run with growth steps and/or data stages; without either, exactly `Trainer(cfg, ...).train()`."""

    def __init__(self, cfg: RunConfig, ds_config: dict, resume: str | None = None):
        self.cfg, self.ds_config = cfg, ds_config
        self.out = Path(cfg.train.out_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        try:
            self.stages = load_stages(cfg.data.stages) if cfg.data.stages else []
        except (StageError, OSError) as e:  # OSError: a missing file, a name too long for the filesystem
            raise ConfigError(f"data.stages: {e}") from e
        self.source = ckpt.resume_dir(cfg.train.out_dir, resume)
        client = ckpt.read_client_state(self.source) if self.source else {}
        start = client.get("step", 0)
        grown = grown_after_crash(self.out, client, latest=resume == "latest")
        if grown:
            self.source, resume = grown, str(grown)
            client = ckpt.read_client_state(grown)
        self.history = list(client.get("growth_history", []))
        taken = {h.get("source_step") for h in self.history}
        self.pending, layout = resume_plan(cfg, client)
        if cfg.growth.mode == "auto" and self.history:  # the layout of the last growth; else parallel.*, so that
            layout = (self.history[-1]["layout"]["tp"], self.history[-1]["layout"]["pp"])  # a resume can reshard
        # stage boundaries still to cross: a boundary at the resume step is crossed unless its growth was taken
        self.boundaries = [(b, i + 1) for i, b in enumerate(cfg.data.stage_steps) if b > start or
                           (b == start and b not in taken)]
        self.stage = sum(1 for b in cfg.data.stage_steps if b < start or (b == start and b in taken))
        self.pim = pim_of(cfg)
        arch = Architecture.from_dict(client["architecture"]) if client else cfg.model
        self._check_plan(arch, start)
        # |D| that g is measured against; only automatic growth reads it (and the data only after the checks)
        self.reference = self._reference_samples(client) if cfg.growth.mode == "auto" else 0
        self.trainer = self._trainer(*layout, resume)
        if self._grew_between_jobs():  # a manifest that grew while no job ran: grow before training
            self.trainer.data_grew = True

    # ---- set-up -----------------------------------------------------------------------------------
    def _grew_between_jobs(self) -> bool:
        return (self.cfg.growth.mode == "auto" and not self.stages and self.source is not None
                and self._growth_due(self.trainer.data_samples))

    def _growth_due(self, samples: int) -> bool:
        return samples > self.reference and samples >= self.reference * self.cfg.growth.data_ratio

    def _reference_samples(self, client: dict) -> int:
        """|D| at the last growth, else at the start of the run: what g is measured against."""
        return reference_samples(client) or count_samples(self.stages[0] if self.stages else self.cfg.data.shards)

    def _check_plan(self, arch: Architecture, start: int) -> None:
        """Every pending written move against the architecture and layout it will meet, before any training."""
        key = "growth.at_steps" if self.pending else "growth.mode=auto"
        if (self.pending or self.cfg.growth.mode == "auto") and self.zero_stage == 3:
            raise ConfigError(f"{key}: growth reads the model-states file of a ZeRO 0-2 save, which ZeRO-3 "
                              "does not write (nor can a run resume from it); use ds_configs/zero1.json or zero2.json")
        if (self.pending or self.cfg.growth.mode == "auto") and self.cfg.train.optimizer == "master_adamw":
            raise ConfigError(f"{key}: growth reads a universal checkpoint, which ds_to_universal cannot make from "
                              "train.optimizer=master_adamw's ZeRO-0 save; grow with train.optimizer=auto under "
                              "ds_configs/zero1.json or zero2.json")
        for g in self.pending:
            key = f"growth.at_steps[{g.index}]={g.step}"
            if g.step < start:
                raise ConfigError(f"{key}: the run resumes at step {start}, past this growth step, and its "
                                  f"checkpoint's growth_history has no growth from it")
            if g.step > start and (self.out / "grown" / f"step{g.step}").exists():
                raise ConfigError(f"{key}: {self.out / 'grown' / f'step{g.step}'} exists from an earlier attempt "
                                  f"that went past step {start}; remove it, or resume that attempt")
            try:
                layout = Layout.for_world(self.world, g.tp, g.pp)
            except LayoutError as e:
                raise ConfigError(f"growth.tp/growth.pp[{g.index}] (tp={g.tp}, pp={g.pp}): {e}") from e
            try:
                grown, _ = target_architecture(arch, g.moves)
                check_growth(arch, grown)
                validate_layout(grown, layout, self.zero_stage)
                if uses_triton(self.cfg):
                    check_kernel_head_dims(grown)
            except (GrowthError, ConfigError) as e:
                raise ConfigError(f"growth.moves[{g.index}] ({g.moves!r} at step {g.step}, tp={g.tp}, "
                                  f"pp={g.pp}): {e}") from e
            arch = grown
        if self.cfg.growth.mode == "auto":
            self._check_auto(start)

    def _check_auto(self, start: int) -> None:
        """What an automatic growth at a stage boundary needs, before any training: no grown folder of a later
        attempt in the way, and enough distinct samples in each stage for the search's proxy data."""
        for b, stage in self.boundaries:
            folder = self.out / "grown" / f"step{b}"
            if b > start and folder.exists():
                raise ConfigError(f"data.stage_steps: {folder} exists from an earlier attempt that went past step "
                                  f"{start}; remove it, or resume that attempt")
            need, have = search_of(self.cfg).needed_samples(), count_samples(self.stages[stage])
            if need > have:
                raise ConfigError(f"growth.proxy_steps/heldout_batches/proxy_batch: the search needs {need} distinct "
                                  f"samples of data.stages[{stage}], which holds {have}")

    def _next_stop(self) -> int:
        """stop_after of the next segment: the next event step, or the user's train.stop_after if sooner."""
        events = [g.step for g in self.pending[:1]] + [b for b, _ in self.boundaries[:1]]
        ends = [s for s in (min(events, default=0), self.cfg.train.stop_after) if s]
        return min(ends, default=0)

    def live_reason(self, tp: int, pp: int) -> str | None:
        """Why a written growth from a trainer at (tp, pp) is not taken from the running engine (None: it is)."""
        return "growth.live=false" if not self.cfg.growth.live else live_reason(self.zero_stage, tp, pp)

    def _live_growth_next(self, tp: int, pp: int) -> bool:
        """Whether the next segment ends at a written growth that the running engine grows into (so that segment
        saves nothing extra at its end): not when the run stops there (train.stop_after) or at a stage crossing."""
        stop, user_stop = self._next_stop(), self.cfg.train.stop_after
        return (bool(self.pending) and self.pending[0].step == stop and self.cfg.growth.mode == "steps"
                and not (user_stop and stop >= user_stop) and not any(b == stop for b, _ in self.boundaries)
                and self.live_reason(tp, pp) is None)

    def _trainer(self, tp: int, pp: int, resume: str | None, pause: dict | None = None) -> Trainer:
        cfg = self.cfg
        data = cfg.data
        if self.stages:
            data = dataclasses.replace(data, shards=data.stages[self.stage], stages=[], stage_steps=[])
        grow_at = None
        if cfg.growth.mode == "auto" and data.refresh_every:
            grow_at = math.ceil(self.reference * cfg.growth.data_ratio)
        seg = dataclasses.replace(cfg, data=data,
                                  train=dataclasses.replace(cfg.train, stop_after=self._next_stop()),
                                  parallel=dataclasses.replace(cfg.parallel, tp=tp, pp=pp))
        return Trainer(seg, self.ds_config, resume=resume, grow_at_samples=grow_at,
                       save_at_stop=not self._live_growth_next(tp, pp), pause=pause)

    # ---- the loop ---------------------------------------------------------------------------------
    def _due(self) -> tuple[GrowthStep | None, int | None, bool]:
        """(written growth, arriving stage, data grew) at the trainer's step."""
        step = self.trainer.step
        growth = self.pending[0] if self.pending and self.pending[0].step == step else None
        stage = self.boundaries[0][1] if self.boundaries and self.boundaries[0][0] == step else None
        return growth, stage, self.trainer.data_grew

    def train(self) -> None:
        stop_after = self.cfg.train.stop_after
        while True:
            if not any(self._due()):
                self.trainer.train()
                if self.trainer.preempted:  # saved (or nothing new since the last save): no growth now; the
                    return  # resume takes the pending growth at this step exactly once (resume_plan, grown_after_crash)
                self.source = ckpt.resume_dir(self.out, "latest")  # None before the first save (live growth)
            step = self.trainer.step
            if step >= self.cfg.train.steps or (stop_after and step >= stop_after) or not any(self._due()):
                return  # done, or stopped by train.stop_after: a later job resumes, and grows first if due
            self._cross(*self._due())

    def _cross(self, growth: GrowthStep | None, stage: int | None, data_grew: bool) -> None:
        """Grow and/or let the next stage in at this step, then restart the trainer on the same ranks. The
        trainer is closed before growing, so the search and the growth have the memory to themselves; when
        nothing changes (no growth due or affordable, no new stage) the trainer goes on as it is."""
        step, rank, arch = self.trainer.step, self.trainer.rank, self.trainer.arch
        layout = Layout.for_world(self.world, self.trainer.layout.tp, self.trainer.layout.pp)
        shards = self.stages[stage] if stage is not None else self.trainer.shards
        samples = count_samples(shards)
        search = self.cfg.growth.mode == "auto" and (stage is not None or data_grew) and self._growth_due(samples)
        if self.cfg.growth.mode == "auto" and (stage is not None or data_grew) and not search and rank == 0:
            print(f"step {step}: data {self.reference} -> {samples} samples (growth.data_ratio "
                  f"{self.cfg.growth.data_ratio}): no growth", flush=True)
        if search:
            from growth.auto import admissible
            search = admissible(arch, samples / max(self.reference, 1), budget_of(self.cfg, self.zero_stage),
                                layout, self.out, step, samples, echo=lambda *a: print(*a, flush=True))
        if growth is None and stage is None and not search:
            self.trainer.data_grew = False  # nothing to do: train on
            return
        pause = {"since": self.trainer.last_step_end or time.perf_counter(), "kind": "checkpoint"}
        if rank == 0 and (growth is not None or search):  # what a growth at this step killed earlier left
            for stale in clear_stale_work(self.out / "grown" / f"step{step}"):
                print(f"removed {stale}, left by a growth that was stopped before it finished", flush=True)
        grown = None
        if growth is not None and self.live_reason(layout.tp, layout.pp) is None:
            grown, pause["kind"] = self._grow_live(growth, samples, pause), "live"
        trainer, self.trainer = self.trainer, None
        close(trainer)
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        resume, tp_pp = self.source, (layout.tp, layout.pp)
        if growth is not None:
            resume, tp_pp = grown or self._grow(growth, samples), (growth.tp, growth.pp)
            self.pending.pop(0)
        elif search:
            grown, result = self._search(step, shards, samples, samples / max(self.reference, 1), layout)
            if grown is not None:
                resume, tp_pp = grown, (result["winner"]["tp"], result["winner"]["pp"])
        if resume != self.source:  # grown and renamed into place, the old engine closed, the new one not yet built
            pause_for_test("restart", resume, rank)
        if resume != self.source or search:  # g is measured from the data at the last search, grown or kept (a
            self.reference = samples          # resume measures it from the last growth: a kept search is not saved)
        if stage is not None:
            self.stage = stage
            self.boundaries.pop(0)
        self.trainer = self._trainer(*tp_pp, str(resume), pause if growth is not None else None)

    def _grow_live(self, g: GrowthStep, samples: int, pause: dict) -> Path:
        """The written growth `g` from the running engine, on every rank (growth/live.py), into OUT/grown/step<N>;
        the trainer is closed after it. `pause` gets the seconds it took."""
        trainer = self.trainer
        started = time.perf_counter()
        src = trainer.arch
        target = Layout.for_world(self.world, g.tp, g.pp)
        dst, move, notes, plan = prepare(src, g.moves, target, self.pim)
        client = trainer.client_state()
        entry = history_entry(move, src, dst, self.pim, False, client["step"], f"live:{self.out}@step{client['step']}",
                              target, notes, {"data_samples": samples})
        out = self.out / "grown" / f"step{g.step}"
        tag, times = grow_live(trainer.engine, grown_client(client, dst, target, entry), dst, plan, self.pim, out,
                               Path(trainer.tokenizer.model_path))
        pause.update({k: round(v, 3) for k, v in times.items()}, grow_total_s=round(time.perf_counter() - started, 3))
        if trainer.rank == 0:
            for note in notes:
                print(f"warning: {note}", flush=True)
            print(f"grew the running model at step {g.step} ({move}) -> {tag}\n{table(src, dst)}", flush=True)
        return tag

    def _grow(self, g: GrowthStep, samples: int) -> Path:
        """Rank 0 grows the saved checkpoint while the others wait; every rank gets the grown folder or the error."""
        out = self.out / "grown" / f"step{g.step}"
        answer: list = [None]
        if dist.get_rank() == 0:
            try:
                grow_checkpoint(self.source, g.moves, out, layout=Layout.for_world(self.world, g.tp, g.pp),
                                pim=self.pim, extra={"data_samples": samples})
            except Exception as e:  # noqa: BLE001 - every rank raises it; none is left waiting in a collective
                answer = [str(e) if isinstance(e, (GrowthError, ckpt.CheckpointError)) else
                          f"{e.__class__.__name__}: {e}"]
        dist.broadcast_object_list(answer, src=0)
        if answer[0] is not None:
            raise GrowthError(f"growth.moves[{g.index}] at step {g.step}: {answer[0]}")
        return ckpt.resume_dir(out, str(out))

    def _search(self, step: int, shards: list[str], samples: int, g: float, layout: Layout
                ) -> tuple[Path | None, dict]:
        from growth.auto import auto_grow
        return auto_grow(self.source, self.out, step, shards, samples, g, layout,
                         budget_of(self.cfg, self.zero_stage), self.pim, search_of(self.cfg),
                         echo=lambda *a: print(*a, flush=True))
