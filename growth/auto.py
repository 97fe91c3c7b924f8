"""One data-aware growth step inside a run: convert the save, search the growth space, record the search, grow
the winner. pretrain/growth_loop.py calls `auto_grow` on every rank after the save at the step where the data
grew; the search spreads its candidates over the ranks (growth/search.py).

Files, under the run folder OUT:
- `OUT/growth/universal-step<N>/`: the save converted by ds_to_universal (rank 0), read by every rank, removed
  once the winner is grown;
- `OUT/growth/search-step<N>.jsonl`: one line per proxy-trained candidate (the reference row included) with
  move, family, FLOPs, parameters, memory estimate, layout, proxy and held-out loss, score, place and search
  time, then one line per candidate the budget or the selection left out, with the reason;
- `OUT/grown/step<N>/`: the winner, written by `grow_checkpoint` (atomically), whose growth history entry holds
  the search summary and the data size;
- TensorBoard (`OUT/tb`): growth/g, growth/winner_score, growth/reference_score, growth/search_seconds and the
  ranked table as text, at step N.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch.distributed as dist

from pretrain import checkpoint as ckpt
from pretrain.data.tokenizer import Tokenizer
from pretrain.parallel.layout import Layout

from . import universal
from .candidates import Budget, generate
from .errors import GrowthError
from .hook import grow_checkpoint
from .pim import PIM
from .search import Hyper, SearchConfig, Source, search, table


def _collective(fn) -> object:
    """Run fn on rank 0; every rank gets its result, or raises a GrowthError with what rank 0 raised (any
    exception: a rank must never leave the others waiting in a collective)."""
    answer: list = [None, None]
    if dist.get_rank() == 0:
        try:
            answer = [fn(), None]
        except Exception as e:  # noqa: BLE001 - forwarded to every rank, which all raise it
            answer = [None, str(e) if isinstance(e, (GrowthError, ckpt.CheckpointError)) else
                      f"{e.__class__.__name__}: {e}"]
    dist.broadcast_object_list(answer, src=0)
    if answer[1] is not None:
        raise GrowthError(answer[1])
    return answer[0]


def write_record(path: Path, result: dict, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in result["records"]:
            f.write(json.dumps({"step": step, "g": result["g"], "data_samples": result["data_samples"], **r}) + "\n")
        for r in result["rejected"]:
            f.write(json.dumps({"step": step, "rejected": True, **r}) + "\n")
    tmp.replace(path)


def _tensorboard(out: Path, step: int, result: dict, seconds: float) -> None:
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(out / "tb"))
    writer.add_scalar("growth/g", result["g"], step)
    writer.add_scalar("growth/search_seconds", seconds, step)
    if result["winner"]:
        writer.add_scalar("growth/winner_score", result["winner"]["score"], step)
    for r in result["records"]:
        if r["reference"]:
            writer.add_scalar("growth/reference_score", r["score"], step)
    writer.add_text("growth/search", table(result), step)
    writer.close()


def admissible(arch, g: float, budget: Budget, layout: Layout, out: Path, step: int, samples: int,
               echo=print) -> bool:
    """Whether the budget admits any candidate (growth/candidates.py: generate, pure and cheap). When it admits
    none, rank 0 records the rejected moves with their reasons in OUT/growth/search-step<N>.jsonl and says so;
    nothing is converted or trained."""
    kept, rejected = generate(arch, g, budget, layout)
    if kept:
        return True
    if dist.get_rank() == 0:
        record = out / "growth" / f"search-step{step}.jsonl"
        write_record(record, {"records": [], "rejected": rejected, "g": g, "data_samples": samples}, step)
        echo(f"[search] step {step}: the budget admits no candidate ({len(rejected)} rejected, e.g. "
             f"{rejected[0]['move']}: {rejected[0]['reason']}; see {record}); the model keeps its architecture")
    return False


def summary(result: dict, record: Path) -> dict:
    """What the growth history keeps of a search."""
    return {"g": result["g"], "data_samples": result["data_samples"], "record": str(record),
            "winner": result["winner"]["move"] if result["winner"] else None,
            "candidates": [{k: r[k] for k in ("move", "gflops", "params", "heldout_loss", "score")}
                           for r in result["records"]]}


def auto_grow(source_tag: Path, out: Path, step: int, shards: list[str], samples: int, g: float, layout: Layout,
              budget: Budget, pim: PIM, cfg: SearchConfig, echo=print) -> tuple[Path | None, dict]:
    """Collective. (grown tag folder, search result); (None, result) when the budget admits no candidate."""
    t0 = time.time()
    work = out / "growth" / f"universal-step{step}"

    def convert() -> str:
        if ckpt.is_universal(source_tag):
            return str(source_tag)
        shutil.rmtree(work, ignore_errors=True)
        return str(universal.to_universal(source_tag, work / source_tag.name))

    uni = Path(_collective(convert))
    try:
        src = Source.read(uni)
        hyper = Hyper.of_run((src.client.get("run_config") or {}).get("train", {}), step)
        tokenizer = Tokenizer(source_tag / "tokenizer.model", src.arch.text.context)
        result = search(src, shards, samples, g, budget, layout, pim, hyper, cfg, tokenizer,
                        echo=echo if dist.get_rank() == 0 else (lambda *_: None))
        record = out / "growth" / f"search-step{step}.jsonl"
        if dist.get_rank() == 0:
            try:  # a record that cannot be written must not leave the other ranks waiting below
                write_record(record, result, step)
                _tensorboard(out, step, result, time.time() - t0)
            except OSError as e:
                echo(f"warning: the search record of step {step} could not be written ({e})")
            echo(f"[search] step {step}\n{table(result)}")
        winner = result["winner"]
        if winner is None:
            if dist.get_rank() == 0:
                echo(f"[search] step {step}: the budget admits no candidate ({len(result['rejected'])} rejected; "
                     f"see {record}); the model keeps its architecture")
            return None, result
        target = Layout.for_world(layout.world, winner["tp"], winner["pp"])
        grown = _collective(lambda: str(grow_checkpoint(
            uni, winner["move"], out / "grown" / f"step{step}", layout=target, pim=pim,
            tokenizer=source_tag / "tokenizer.model", echo=echo,
            extra={"data_samples": samples, "search": summary(result, record),
                   "source": str(source_tag.resolve())})))  # the save, not the removed conversion
        return Path(grown), result
    finally:
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(work, ignore_errors=True)
