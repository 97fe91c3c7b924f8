"""One data-aware growth step inside a run: convert the save, search the growth space, record the search, grow
the winner. pretrain/growth_loop.py calls `auto_grow` on every rank after the save at the step where the data
grew; the search spreads its candidates over the ranks (growth/search.py).

Files, under the run folder OUT:
- `OUT/growth/universal-step<N>/`: the save converted by ds_to_universal (rank 0), read by every rank, removed
  once the winner is grown;
- `OUT/growth/search-step<N>.jsonl`: one line per proxy-trained candidate (the unchanged model's reference row
  included) with move, family, FLOPs, parameters, memory estimate, layout, proxy and held-out loss (per stream
  and per held-out batch too), score, place and search time; then one line per candidate the budget or the
  selection left out, with the reason; then the summary line: the decision (grow or "kept: no growth"), margin
  and noise, the search's compute (`search_gflop`), the run's training compute so far (`train_gflop`, from
  metrics.jsonl), `share_so_far`, the projected training compute of the whole run (`run_gflop`: so far, plus
  the remaining steps at the decided architecture) and `share` = search_gflop / run_gflop;
- `OUT/grown/step<N>/`: the winner, written by `grow_checkpoint` (atomically), whose growth history entry holds
  the search summary and the data size;
- TensorBoard (`OUT/tb`): growth/g, growth/winner_score, growth/reference_score, growth/noise,
  growth/search_share, growth/search_seconds and the ranked table as text, at step N.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch.distributed as dist

from pretrain import checkpoint as ckpt
from pretrain.data.tokenizer import load_tokenizer
from pretrain.parallel.layout import Layout

from . import universal
from .candidates import Budget, generate
from .errors import GrowthError
from .hook import grow_checkpoint
from .live import pause_for_test
from .pim import PIM
from .search import Hyper, SearchConfig, Source, search, table, write_record


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


def compute_share(out: Path, step: int, result: dict, steps: int) -> dict:
    """The search's share of the run's training compute: so far (metrics.jsonl up to `step`) and projected over
    the whole run (the remaining steps at the decided architecture, at the last step's samples per step)."""
    from .timeline import read_metrics
    rows = [r for r in read_metrics(out) if r["step"] <= step] if (out / "metrics.jsonl").is_file() else []
    so_far, prev = 0.0, 0
    for r in rows:
        so_far += 3 * r["gflops"] * (r["samples"] - prev)
        prev = r["samples"]
    per_step = rows[-1]["samples"] - rows[-2]["samples"] if len(rows) > 1 else prev
    winner = result["winner"]
    gflops = winner["gflops"] if winner else (rows[-1]["gflops"] if rows else 0.0)
    run = so_far + 3 * gflops * per_step * max(steps - step, 0)
    cost = result["decision"]["search_gflop"]
    return {"train_gflop": so_far, "share_so_far": cost / so_far if so_far else None, "run_gflop": run,
            "share": cost / run if run else None}


def _tensorboard(out: Path, step: int, result: dict, seconds: float, share: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(out / "tb"))
    writer.add_scalar("growth/g", result["g"], step)
    writer.add_scalar("growth/search_seconds", seconds, step)
    if result["winner"]:
        writer.add_scalar("growth/winner_score", result["winner"]["score"], step)
    for r in result["records"]:
        if r["reference"]:
            writer.add_scalar("growth/reference_score", r["score"], step)
    if result["decision"]["noise"] is not None:
        writer.add_scalar("growth/noise", result["decision"]["noise"], step)
    if share.get("share") is not None:
        writer.add_scalar("growth/search_share", share["share"], step)
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


def summary(result: dict, record: Path, share: dict) -> dict:
    """What the growth history keeps of a search."""
    d = result["decision"]
    return {"g": result["g"], "data_samples": result["data_samples"], "record": str(record),
            "winner": result["winner"]["move"] if result["winner"] else None,
            **{k: d[k] for k in ("margin", "noise", "noise_margin", "search_gflop")}, **share,
            "candidates": [{k: r[k] for k in ("move", "gflops", "params", "heldout_loss", "score")}
                           for r in result["records"]]}


def auto_grow(source_tag: Path, out: Path, step: int, shards: list[str], samples: int, g: float, layout: Layout,
              budget: Budget, pim: PIM, cfg: SearchConfig, echo=print) -> tuple[Path | None, dict]:
    """Collective. (grown tag folder, search result); (None, result) when no growth beat the unchanged model
    by more than the noise rule asks (growth/search.py `decide`), or the budget admits no candidate."""
    t0 = time.time()
    work = out / "growth" / f"universal-step{step}"

    def convert() -> str:
        if ckpt.is_universal(source_tag):
            return str(source_tag)
        shutil.rmtree(work, ignore_errors=True)
        return str(universal.to_universal(source_tag, work / source_tag.name))

    uni = Path(_collective(convert))
    pause_for_test("converted", uni, dist.get_rank())
    try:
        src = Source.read(uni)
        hyper = Hyper.of_run(src.client.get("run_config") or {}, step)
        tokenizer = load_tokenizer(source_tag / "tokenizer.model", src.arch.text.context)
        result = search(src, shards, samples, g, budget, layout, pim, hyper, cfg, tokenizer,
                        echo=echo if dist.get_rank() == 0 else (lambda *_: None))
        record = out / "growth" / f"search-step{step}.jsonl"
        steps = int(((src.client.get("run_config") or {}).get("train") or {}).get("steps", step))
        share = {}
        if dist.get_rank() == 0:
            try:  # a record that cannot be written must not leave the other ranks waiting below
                share = compute_share(out, step, result, steps)
                write_record(record, result, step, share)
                _tensorboard(out, step, result, time.time() - t0, share)
            except (OSError, ValueError, KeyError) as e:
                echo(f"warning: the search record of step {step} could not be written ({e})")
            pct = (f"{100 * share['share']:.2f}% of the run's training compute" if share.get("share")
                   else "share unknown")
            echo(f"[search] step {step}\n{table(result)}\n[search] step {step}: the search cost "
                 f"{result['decision']['search_gflop']:.4g} GFLOPs, {pct}")
        winner = result["winner"]
        if winner is None:
            if dist.get_rank() == 0:
                d = result["decision"]
                echo(f"[search] step {step}: no growth: the best candidate {d['best']} scored {d['winner_score']:.4f} "
                     f"against {d['reference_score']:.4f} for the unchanged model, a lead of {d['margin']:+.4f} "
                     f"within {d['noise_margin']:g} x the noise {d['noise']:.4f}; the model keeps its architecture "
                     f"(see {record})" if d["best"] is not None else
                     f"[search] step {step}: the budget admits no candidate; the model keeps its architecture")
            return None, result
        target = Layout.for_world(layout.world, winner["tp"], winner["pp"])
        grown = _collective(lambda: str(grow_checkpoint(
            uni, winner["move"], out / "grown" / f"step{step}", layout=target, pim=pim,
            tokenizer=source_tag / "tokenizer.model", echo=echo,
            extra={"data_samples": samples, "search": summary(result, record, share),
                   "source": str(source_tag.resolve())})))  # the save, not the removed conversion
        return Path(grown), result
    finally:
        dist.barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(work, ignore_errors=True)
