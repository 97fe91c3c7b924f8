"""Growth of the model being trained, straight from the live engine (issue 19, item 5): no save before it, no
`ds_to_universal` subprocess, no second full conversion, and every rank grows its share in parallel.

`grow_live` is collective (every rank calls it). For each source parameter, in model order, the fp32 master
weight and both Adam moments are reduced from the ranks' ZeRO partitions (each rank holds a fragment of the flat
group buffers) to the one rank that grows every target parameter reading that source (`assign`: whole sources,
largest first, to the least loaded rank). That rank applies T and the PIM blend (growth/transform.py, the
functions the checkpoint writer calls) and writes the parameter's universal files; rank 0 also grows the EMA and
writes the model-states file and the global optimizer state. Everything goes into a temporary folder beside
`out`, renamed to `out` after a barrier: the grown checkpoint is durable and complete before training goes on,
or absent. Its files are those `growth/hook.py` writes from a saved checkpoint (tested equal), except the
model-states file's `module`, left empty: universal loading reads the weights from zero/<param>/fp32.pt.

Valid where every rank holds the whole module and DeepSpeed's ZeRO-1/2 optimizer holds the master weights:
tp = 1, pp = 1, ZeRO stage 1 or 2 (`live_reason` says why not otherwise; the run then saves and grows the saved
checkpoint, growth/hook.py). The target layout is free: the universal checkpoint reshards on load.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.model import CLIP

from . import universal
from .errors import GrowthError
from .index_map import TensorMap
from .pim import PIM, fresh_init
from .transform import grow_from_source, grow_weights
from .writer import param_shapes, with_grown_ema

SHARDED = ("base_optimizer_state", "param_slice_mappings", "single_partition_of_fp32_groups")  # ds_to_universal's
PAUSE_ENV = "GROWCLIP_TEST_PAUSE_IN_GROWTH"  # test-only: "PHASE:SECONDS" (pause_for_test; tests/faults.py)
PAUSE_MARKER = "GROWCLIP_TEST_PAUSE_IN_GROWTH:"


def live_reason(zero_stage: int, tp: int, pp: int) -> str | None:
    """Why a growth from this run cannot be taken from the live engine (None: it can)."""
    if tp != 1 or pp != 1:
        return f"the run is at tp={tp}, pp={pp} (live growth needs every rank to hold the whole model)"
    if zero_stage not in (1, 2):
        return f"ZeRO stage {zero_stage} (live growth reads the ZeRO-1/2 optimizer's partitions)"
    return None


def assign(plan: dict[str, TensorMap], sizes: dict[str, int], world: int) -> dict[str, int]:
    """Target parameter -> the rank that grows and writes it. The targets that read one source go to one rank
    (the source is gathered once); new parameters each count alone. Placed largest first on the least loaded
    rank, ties to the lower rank: every rank computes the same answer."""
    groups: dict[str, list[str]] = {}
    for name, tmap in plan.items():
        groups.setdefault(tmap.source if isinstance(tmap.source, str) else f"\0new:{name}", []).append(name)
    load, owner = [0] * world, {}
    for key, names in sorted(groups.items(), key=lambda kv: (-sum(sizes[n] for n in kv[1]), kv[0])):
        rank = min(range(world), key=lambda r: (load[r], r))
        load[rank] += sum(sizes[n] for n in names)
        owner.update({n: rank for n in names})
    return owner


def _fragment(engine, mapping, key: str) -> torch.Tensor:
    """This rank's fragment of one parameter's fp32 weight or Adam moment `key`, read from the ZeRO optimizer's
    flat partition (the moments through the optimizer state: DeepSpeed 0.19 links `_hp_mapping.optim_fragment`
    only for the parameter groups stepped before its first link, so with two groups the second one's is empty)."""
    if key == "fp32":
        return mapping.hp_fragment
    flat = engine.optimizer.single_partition_of_fp32_groups[mapping.param_group_index]
    address = mapping.hp_fragment_address
    return engine.optimizer.optimizer.state[flat][key].narrow(0, address.start, address.numel)


def _full_states(engine, param: torch.nn.Parameter, keys: tuple[str, ...], dst: int) -> torch.Tensor | None:
    """fp32 weight and moments (`keys`) of one parameter, whole, on rank `dst` (None elsewhere): every rank puts
    its ZeRO fragment at its offset of a zero buffer, one reduce sums them."""
    buf = torch.zeros((len(keys), param.numel()), dtype=torch.float32, device=param.device)
    mapping = getattr(param, "_hp_mapping", None)
    if mapping is not None:
        start, numel = mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel
        for i, key in enumerate(keys):
            buf[i].narrow(0, start, numel).copy_(_fragment(engine, mapping, key))
    dist.reduce(buf, dst=dst)
    return buf.cpu() if dist.get_rank() == dst else None


def _moment_keys(engine) -> tuple[str, ...]:
    """fp32 plus the Adam moments the optimizer holds (none before its first step); every rank agrees."""
    state = engine.optimizer.optimizer.state
    held = {k for flat in engine.optimizer.single_partition_of_fp32_groups for k in state.get(flat, {})}
    have = torch.tensor([int(k in held) for k in universal.STATES[1:]], dtype=torch.int32)
    dist.all_reduce(have, op=dist.ReduceOp.MAX)
    return ("fp32", *(k for k, h in zip(universal.STATES[1:], have.tolist()) if h))


def _step(engine) -> torch.Tensor | None:
    state = engine.optimizer.optimizer.state
    step = next((s["step"] for s in state.values() if "step" in s), None)
    return None if step is None else (step.detach().cpu().clone() if torch.is_tensor(step) else torch.tensor(step))


def _optimizer_state(engine) -> dict:
    """What ds_to_universal writes to zero/optimizer_state.pt, from this rank's ZeRO optimizer (rank 0's)."""
    sd = engine.optimizer.state_dict()
    kept = {k: v for k, v in sd.items() if k not in SHARDED}
    return {**kept, "param_groups": sd["base_optimizer_state"]["param_groups"]}


def grow_live(engine, client: dict, dst: Architecture, plan: dict[str, TensorMap], pim: PIM, out: Path,
              tokenizer: Path, reset_moments: bool = False) -> tuple[Path, dict]:
    """Grow the engine's model into `dst` and write the universal checkpoint `out/<tag>` (collective). `client`:
    the grown client state (growth/hook.py `grown_client`: architecture `dst`, the history with this growth),
    whose EMA, still the source's, is grown here. Returns the tag folder and this rank's seconds per phase."""
    rank, world = dist.get_rank(), dist.get_world_size()
    times, t0 = {}, time.perf_counter()
    tag = f"step{client['step']:08d}"
    work = [None]
    if rank == 0:
        if out.exists():
            work = [f"error: {out} already exists; growth never writes over a folder"]
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            work = [tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent)]
    dist.broadcast_object_list(work, src=0)
    if work[0].startswith("error: "):
        raise GrowthError(work[0][len("error: "):])
    new_tag = Path(work[0]) / "out" / tag
    errors: list[str] = []
    try:
        if rank == 0:
            new_tag.mkdir(parents=True)
        dist.barrier()
        init = fresh_init(dst, pim.seed)
        with torch.device("meta"):
            meta = CLIP(dst)
        uc_info = ckpt.universal_checkpoint_info([n for n, _ in meta.named_parameters()], dst.text.vocab, 1)
        owner = assign(plan, {n: t.numel() for n, t in init.items()}, world)
        ema = (client.get("ema") or {}).get("shadow") or {}
        step = torch.zeros(()) if reset_moments or not pim.inherit else _step(engine)
        keys = _moment_keys(engine)
        times["prepare_s"] = time.perf_counter() - t0

        def write(name: str, tensors: dict[str, torch.Tensor]) -> None:
            if errors:
                return  # after a failure this rank only takes part in the collectives
            try:
                grown = grow_from_source(plan[name], tensors, ema, init[name], pim, reset_moments)
                universal.save_parameter(new_tag, name, grown, universal.entry_keys(name, init[name].shape, uc_info),
                                         step)
            except Exception as e:  # noqa: BLE001 - reported by every rank after the collectives
                errors.append(f"{name}: {e.__class__.__name__}: {e}")

        readers: dict[str, list[str]] = {}
        for name, tmap in plan.items():
            if isinstance(tmap.source, str):
                readers.setdefault(tmap.source, []).append(name)
        params = dict(engine.module.named_parameters())
        missing = sorted(set(readers) - set(params))
        if missing:
            raise GrowthError(f"the running model has no parameter {missing[0]!r} that the growth plan reads")
        for source in params:  # model order: the same sequence of reduces on every rank
            if source not in readers:
                continue
            dst_rank = owner[readers[source][0]]
            full = _full_states(engine, params[source], keys, dst_rank)
            if full is not None:
                tensors = {k: full[i].view(params[source].shape) for i, k in enumerate(keys)}
                for name in readers[source]:
                    write(name, tensors)
        for name, tmap in plan.items():
            if not isinstance(tmap.source, str) and owner[name] == rank:
                write(name, {})
        times["grow_s"] = time.perf_counter() - t0 - times["prepare_s"]
        if rank == 0 and not errors:
            try:
                _write_model_states(engine, new_tag, client, dst, plan, ema, init, pim, meta, uc_info)
                shutil.copyfile(tokenizer, new_tag / "tokenizer.model")
                for name in ("latest", "latest_universal"):
                    (new_tag.parent / name).write_text(tag)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{new_tag / ckpt.MODEL_STATES}: {e.__class__.__name__}: {e}")
        if not errors and rank == 0:
            optimizer_state = _optimizer_state(engine)
            try:
                universal.save_optimizer_state(optimizer_state, new_tag, [len(g) for g in param_shapes(meta)],
                                               "the running ZeRO optimizer")
            except Exception as e:  # noqa: BLE001
                errors.append(f"{new_tag / 'zero' / universal.OPTIMIZER_STATE}: {e.__class__.__name__}: {e}")
        reports = [None] * world
        dist.all_gather_object(reports, errors)
        failed = [f"rank {r}: {e[0]}" for r, e in enumerate(reports) if e]
        if failed:
            raise GrowthError(f"growing {out} from the running model failed ({failed[0]}); nothing was written")
        pause_for_test("written", new_tag, rank)
        answer = [None]
        if rank == 0:
            try:
                if out.exists():
                    raise GrowthError(f"{out} appeared while growing; the grown checkpoint is not written over it")
                os.rename(new_tag.parent, out)
            except (OSError, GrowthError) as e:
                answer = [str(e)]
        dist.broadcast_object_list(answer, src=0)
        if answer[0] is not None:
            raise GrowthError(answer[0])
    finally:
        dist.barrier()
        if rank == 0:
            shutil.rmtree(work[0], ignore_errors=True)
    times["total_s"] = time.perf_counter() - t0
    return out / tag, times


def _write_model_states(engine, new_tag: Path, client: dict, dst: Architecture, plan: dict[str, TensorMap],
                        ema: dict, init: dict, pim: PIM, meta: torch.nn.Module, uc_info: dict) -> None:
    """The model-states file: DeepSpeed's own metadata of this engine (lr scheduler, step counters, config), the
    grown client state with the grown EMA (writer.py's rule), the grown parameter shapes."""
    grown_ema = grow_weights(plan, ema, init, pim) if ema else {}
    states = engine._common_checkpoint_state(OrderedDict(), True, False)  # what save_checkpoint writes, less module
    states.update({"module": OrderedDict(), "param_shapes": param_shapes(meta),
                   ckpt.CLIENT_KEY: with_grown_ema(client, grown_ema, pim),
                   "universal_checkpoint_info": uc_info, "mp_world_size": 1,
                   "checkpoint_parallel_dimensions": {"pp_degree": 1, "tp_degree": 1}})
    torch.save(states, new_tag / ckpt.MODEL_STATES)


def pause_for_test(phase: str, what: Path, rank: int) -> None:
    """Test-only (tests/faults.py): with GROWCLIP_TEST_PAUSE_IN_GROWTH=PHASE:SECONDS every rank that gets here
    sleeps at that phase of a growth, rank 0 printing a PAUSE_MARKER line first, so that a kill can be made to
    land there. Phases: `search-train` (growth/search.py: a rank's first candidate proxy-trained, the others not
    yet), `search-gather` (every candidate trained, the records not yet gathered), `converted` (the save
    converted by ds_to_universal: growth/auto.py on every rank, growth/hook.py on rank 0), `written` (the grown
    checkpoint written into its temporary folder, not yet renamed into place: here on every rank, growth/hook.py
    on rank 0), `restart` (pretrain/growth_loop.py: renamed, the old engine closed, the new one not yet built).
    Unset or another phase: nothing."""
    wanted, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted != phase or not seconds:
        return
    if rank == 0:
        print(f"\n{PAUSE_MARKER} {phase} {what}, pausing {seconds} s", flush=True)
    time.sleep(float(seconds))
