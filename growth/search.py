"""The growth search: grow every candidate from the current checkpoint with PIM, proxy-train it for K steps on
the grown data D_t (carrying its optimizer state), score it on a held-out slice of D_t, and rank.

- **Data.** One deterministic stream over D_t (seed `seed`; each batch is drawn from 8 disjoint shard streams,
  no workers): its first K batches are the first proxy stream, the next H batches the held-out slice, the next
  K the second proxy stream. They are disjoint as long as (2K + H)·batch <= |D_t| (the search refuses
  otherwise). Every candidate sees the same batches.
- **Proxy training.** A single-device CLIP(target), weights and Adam moments grown from the source by the
  growth operators and PIM (exactly what `grow_checkpoint` writes), torch AdamW with the run's betas, eps and
  weight decay, at the run's learning rate at the growth step, re-warmed and cooled down alike for every row
  (`Hyper`); the Adam step counter continues.
- **Score** (lower is better): held-out contrastive loss + `penalty`·log2(FLOPs_candidate / FLOPs_source)
  − `eval_weight`·(top-1 of `eval_task`, when one is named). The penalty prices compute per sample; it defaults
  to 0, because the candidates trained are those closest to the compute target (`target_ratio`,
  growth/candidates.py `select`) and the decision against not growing is guarded by the noise rule below.
- **"No growth" is a candidate.** The unchanged architecture is proxy-trained and scored like the others (the
  reference row). Every row is trained twice from the same grown start, on two disjoint streams of K proxy
  batches, and scored on the mean of its two held-out losses. The **noise** of the proxy is measured at every
  search, on the lead of the best candidate over the reference: the standard error of the mean of its two
  paired differences (one per stream: the same comparison on other proxy batches), combined with the standard
  error of the per-batch held-out differences. The best candidate wins only when it beats the reference's score
  by more than `noise_margin`·noise; otherwise the run keeps its architecture ("kept": the reference is the
  winner) and trains on. Noise and margin are recorded. `always_grow` (growth.always_grow) lets the best
  candidate win regardless, as the search before 2026-12 did (an ablation).
- **Compute.** Every row costs 2·gflops·proxy_batch·(3·K + H) GFLOPs (per stream, forward and backward on the
  proxy batches, forward on the held-out ones); their sum is `search_gflop`, recorded with the decision, so
  that a run counts every search in its compute (growth/auto.py adds the share of the run).
- **Parallel.** Candidate i runs on rank i mod world; the records are gathered on every rank. Each candidate
  is computed the same way at any world size (same data, same seeds, one intra-op thread), so the ranking,
  winner and scores do not depend on the number of ranks, while the wall time falls with it.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pretrain import checkpoint as ckpt
from pretrain.arch import Architecture
from pretrain.data.pipeline import TrainLoader
from pretrain.data.tokenizer import Tokenizer, load_tokenizer
from pretrain.loss import clip_loss_torch
from pretrain.model import CLIP, get_backend, set_backend
from pretrain.optim import param_groups
from pretrain.schedule import lr_at

from . import universal
from .candidates import Budget, Candidate, generate, select
from .errors import GrowthError
from .live import pause_for_test
from .pim import PIM, fresh_init
from .plan import plan_growth
from .summary import parameter_counts
from .transform import grow_from_source

MIX = 8  # streams a proxy batch is drawn from


@dataclass(frozen=True)
class SearchConfig:
    # candidates 3 and K = 20 kept by docs/results/growth-pays.md ("Defaults set from these tables"): 40 proxy
    # steps made the same decision, one candidate chose the same move
    candidates: int = 3          # at most this many are proxy-trained (growth/candidates.py: select)
    proxy_steps: int = 20        # K
    proxy_batch: int = 64
    heldout_batches: int = 4     # H
    penalty: float = 0.0         # score += penalty * log2(FLOPs ratio); see the module docstring
    target_ratio: float = 4.0    # the FLOPs growth the candidates are chosen around (candidates.select)
    noise_margin: float = 1.0    # a growth must beat "no growth" by this many measured noise units
    cooldown: float = 0.5        # the proxy's lr decays linearly to 0 over this share of its K steps
    always_grow: bool = False    # the best candidate wins even when no growth scores better (the old search)
    eval_task: str = ""          # e.g. fashion_mnist; "" = loss only
    eval_weight: float = 1.0
    eval_limit: int = 500
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def needed_samples(self) -> int:
        """Distinct samples a search reads: two streams of K proxy batches and H held-out batches."""
        return (2 * self.proxy_steps + self.heldout_batches) * self.proxy_batch


@dataclass(frozen=True)
class Hyper:
    """The run's optimizer settings at the growth step. Every row, the unchanged model's included, follows the
    same lr path over its K proxy steps: the k-th step runs at k / (r + 1) of `lr` while k <= r (the run's
    re-warm after a growth, pretrain/schedule.py, with r = growth.rewarm_steps compressed to at most K/4), then
    the lr decays linearly to 0 over the last `cooldown`·K steps, so that the held-out loss is read off a settled
    model, not one oscillating at the peak lr. The same path for all compares the architectures, not the lr
    they got (docs/design.md, "Data-aware growth", has the measurements behind both choices)."""
    lr: float
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.2
    rewarm: int = 0

    @classmethod
    def of_run(cls, run: dict, step: int) -> "Hyper":
        """From a checkpoint's run config (a dict): the scheduled lr at `step` and growth.rewarm_steps."""
        train = run.get("train") or {}
        return cls(lr_at(train, step), tuple(train.get("betas", (0.9, 0.98))), float(train.get("eps", 1e-6)),
                   float(train.get("weight_decay", 0.2)), int((run.get("growth") or {}).get("rewarm_steps", 0)))

    def lr_of(self, k: int, steps: int, cooldown: float) -> float:
        """The lr of proxy step k (1-based) of `steps`: the re-warm, then the cool-down (every row alike)."""
        rewarm = min(self.rewarm, steps // 4)  # the run's re-warm, compressed to at most a quarter of the proxy
        ramp = k / (rewarm + 1) if k <= rewarm else 1.0
        tail = max(1, round(cooldown * steps)) if cooldown > 0 else 0
        return self.lr * ramp * (min(1.0, (steps - k + 1) / (tail + 1)) if tail else 1.0)


@dataclass
class Source:
    """A universal checkpoint in memory: per parameter its fp32 weight and Adam moments, the step, the EMA."""
    tag: Path
    arch: Architecture
    client: dict
    tensors: dict
    step: torch.Tensor | None

    @classmethod
    def read(cls, tag: Path) -> "Source":
        states = universal.load(tag / ckpt.MODEL_STATES)
        client = states.get(ckpt.CLIENT_KEY) if isinstance(states, dict) else None
        if not isinstance(client, dict) or "architecture" not in client:
            raise GrowthError(f"{tag / ckpt.MODEL_STATES}: no '{ckpt.CLIENT_KEY}' client state")
        arch = Architecture.from_dict(client["architecture"], source=str(tag))
        with torch.device("meta"):
            names = [n for n, _ in CLIP(arch).named_parameters()]
        return cls(tag, arch, client, {n: universal.load_parameter(tag, n) for n in names}, universal.read_step(tag))


def proxy_data(shards: list[str], tokenizer: Tokenizer, image_size: int, cfg: SearchConfig, samples: int):
    """(first proxy stream, held-out batches, second proxy stream): consecutive batches of one seeded stream over
    D_t, K, H and K of them. Each batch joins the next rows of MIX disjoint streams (the loader's own split of the
    shards), so that it holds samples of several shards, old and new, not the first shard or two of one
    sequential reader."""
    need = cfg.needed_samples()
    if samples and need > samples:
        raise GrowthError(f"the search needs {need} distinct samples ((2 x proxy_steps {cfg.proxy_steps} + "
                          f"heldout_batches {cfg.heldout_batches}) x proxy_batch {cfg.proxy_batch}) but the data "
                          f"has {samples}")
    mix = next(m for m in range(min(MIX, len(shards), cfg.proxy_batch), 0, -1) if cfg.proxy_batch % m == 0)
    streams = [iter(TrainLoader(shards, tokenizer, image_size, cfg.proxy_batch // mix, dp_rank=i, dp_world=mix,
                                workers=0, seed=cfg.seed, shuffle_buffer=4 * cfg.proxy_batch // mix))
               for i in range(mix)]
    batches = []
    k, h = cfg.proxy_steps, cfg.heldout_batches
    for _ in range(2 * k + h):
        parts = [next(it) for it in streams]
        batches.append((torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])))
    return batches[:k], batches[k:k + h], batches[k + h:]



def grown_model(src: Source, dst: Architecture, pim: PIM, hyper: Hyper, device) -> tuple[CLIP, torch.optim.AdamW]:
    """CLIP(dst) and its AdamW, with weights and moments grown from `src` as grow_checkpoint grows them."""
    plan = plan_growth(src.arch, dst, split=pim.split, depth_init=pim.depth_init)
    init = fresh_init(dst, pim.seed)
    ema = (src.client.get("ema") or {}).get("shadow") or {}
    if pim.inherit and pim.source == "ema" and not ema:
        raise GrowthError(f"{src.tag}: PIM source 'ema' but the checkpoint holds no EMA weights; use 'last'")
    grown = {}
    for name, tmap in plan.items():
        tensors = src.tensors[tmap.source] if isinstance(tmap.source, str) else {}
        grown[name] = grow_from_source(tmap, tensors, ema, init[name], pim)
    model = CLIP(dst)
    model.load_state_dict({n: g["fp32"] for n, g in grown.items()}, strict=False)
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model, hyper.weight_decay), lr=hyper.lr, betas=hyper.betas, eps=hyper.eps)
    step = float(src.step) if src.step is not None and pim.inherit else 0.0
    for name, p in model.named_parameters():
        opt.state[p] = {"step": torch.tensor(step), "exp_avg": grown[name]["exp_avg"].to(device).clone(),
                        "exp_avg_sq": grown[name]["exp_avg_sq"].to(device).clone()}
    return model, opt


def _loss(model: CLIP, batch, device) -> torch.Tensor:
    image, text, scale = model(batch[0].to(device), batch[1].to(device))
    return clip_loss_torch(image.float(), text.float(), image.float(), text.float(), scale.float())


def evaluate_candidate(src: Source, dst: Architecture, pim: PIM, hyper: Hyper, streams, heldout, cfg: SearchConfig,
                       tokenizer: Tokenizer, device) -> dict:
    """Proxy-train one candidate on each stream of proxy batches (from the same grown start) and measure it: the
    proxy and held-out loss averaged over the streams, each stream's held-out loss, the per-batch held-out
    losses averaged over the streams; the optional eval metric (of the last stream's model)."""
    runs = [_proxy_train(src, dst, pim, hyper, train, heldout, cfg, device) for train in streams]
    model = runs[-1].pop("model")
    for r in runs[:-1]:
        r.pop("model")
    out = {"proxy_loss": sum(r["proxy_loss"] for r in runs) / len(runs),
           "proxy_first": runs[0]["proxy_first"],
           "heldout_loss": sum(r["heldout_loss"] for r in runs) / len(runs),
           "heldout_by_stream": [r["heldout_loss"] for r in runs],
           "heldout_losses": [sum(v) / len(v) for v in zip(*(r["heldout_losses"] for r in runs))],
           "streams": len(runs)}
    if cfg.eval_task:
        from eval import intrain
        from pretrain.data.transforms import eval_transform
        results = intrain.run(model, tokenizer, eval_transform(dst.vision.image_size), cfg.eval_task,
                              cfg.eval_limit, rank=0, world=1)
        top1 = [v for k, v in results.items() if k.endswith("/acc1")]
        out["eval"] = results
        out["eval_top1"] = sum(top1) / len(top1) if top1 else None
    return out


def _proxy_train(src: Source, dst: Architecture, pim: PIM, hyper: Hyper, train, heldout, cfg: SearchConfig,
                 device) -> dict:
    model, opt = grown_model(src, dst, pim, hyper, device)
    model.train()
    losses = []
    for k, batch in enumerate(train, 1):
        for group in opt.param_groups:
            group["lr"] = hyper.lr_of(k, len(train), cfg.cooldown)
        loss = _loss(model, batch, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        held = [_loss(model, b, device).item() for b in heldout]
    return {"model": model, "proxy_loss": losses[-1] if losses else None, "proxy_first": losses[0] if losses else None,
            "heldout_loss": sum(held) / max(len(held), 1), "heldout_losses": held}


def reference_samples(client: dict) -> int | None:
    """|D| that g is measured against: the data at the last growth (the growth history), else the run's first
    data size (the trainer keeps it in every checkpoint), else the size the checkpoint trained on."""
    for h in reversed(client.get("growth_history", [])):
        if h.get("data_samples"):
            return int(h["data_samples"])
    first = client.get("data_samples_first") or client.get("data_samples")
    return int(first) if first else None


def score(result: dict, gflops: float, base_gflops: float, cfg: SearchConfig) -> float:
    s = result["heldout_loss"] + cfg.penalty * math.log2(gflops / base_gflops)
    if cfg.eval_task and result.get("eval_top1") is not None:
        s -= cfg.eval_weight * result["eval_top1"]
    return s


def noise_of(best: dict, reference: dict) -> float:
    """The proxy's measured noise on the lead of `best` over no growth: the standard error of the mean of the two
    streams' paired differences (the same comparison on other proxy batches), combined with the standard error of
    the per-batch held-out differences."""
    d = [b - r for b, r in zip(best["heldout_by_stream"], reference["heldout_by_stream"])]
    rep = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    diffs = [b - r for b, r in zip(best["heldout_losses"], reference["heldout_losses"])]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    return math.sqrt(rep * rep + se * se)


def cost_gflop(row: dict) -> float:
    """GFLOPs one proxy-trained row cost: per stream, forward and backward on K batches, forward on H."""
    return row["gflops"] * row["proxy_batch"] * (3 * row["proxy_steps"] + row["heldout_batches"]) * row["streams"]


def decide(records: list[dict], cfg: SearchConfig) -> dict:
    """Rank the candidates, measure the noise, and let "no growth" win unless the best candidate beats it by
    more than noise_margin x noise. Marks place and winner on the records; returns the decision."""
    reference = next(r for r in records if r["reference"])
    ranked = sorted((r for r in records if not r["reference"]), key=lambda r: (r["score"], r["index"]))
    for place, r in enumerate(ranked, 1):
        r["place"], r["winner"] = place, False
    reference["place"], reference["winner"] = None, False
    best = ranked[0] if ranked else None
    noise = noise_of(best, reference) if best else None
    margin = reference["score"] - best["score"] if best else None
    grow = best is not None and (cfg.always_grow or margin > cfg.noise_margin * noise)
    (best if grow else reference)["winner"] = True
    return {"kept": not grow, "winner": best["move"] if grow else None, "best": best["move"] if best else None,
            "reference_score": reference["score"], "winner_score": best["score"] if best else None,
            "margin": margin, "noise": noise, "noise_margin": cfg.noise_margin,
            "search_gflop": sum(cost_gflop(r) for r in records)}


def search(src: Source, shards: list[str], samples: int, g: float, budget: Budget, layout, pim: PIM, hyper: Hyper,
           cfg: SearchConfig, tokenizer: Tokenizer, echo=print) -> dict:
    """Collective when torch.distributed is initialised (every rank calls it with the same arguments).
    Returns {"records": ranked candidate records, then the reference row, "rejected": [...],
    "winner": the winning candidate's record, or None when no growth won (or none was admitted), "decision":
    see `decide`}."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    kept, rejected = generate(src.arch, g, budget, layout)
    chosen = select(kept, cfg.candidates, cfg.target_ratio, src.arch)
    rejected = rejected + [{"move": c.moves, "reason": f"not selected (at most {cfg.candidates} candidates)"}
                           for c in kept if c not in chosen]
    base = src.arch.flops_per_sample() / 1e9
    unchanged = Candidate("", "reference", src.arch, base, parameter_counts(src.arch)["total"], 0.0, layout.tp,
                          layout.pp)
    first, heldout, second = proxy_data(shards, tokenizer, src.arch.vision.image_size, cfg, samples)
    jobs = [unchanged] + chosen
    echo(f"[search] g={g:.3f}: {len(kept)} candidates within the budget, {len(rejected) - len(kept) + len(chosen)} "
         f"rejected; proxy-training {len(chosen)} (closest to {cfg.target_ratio:g}x FLOPs) + no growth on "
         f"{world} rank(s), {cfg.proxy_steps} steps on each of 2 batch streams")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic at every world size
    mine, backend = [], get_backend()
    set_backend("torch")  # the torch attention everywhere: the same arithmetic in the run and offline
    try:
        for index, cand in enumerate(jobs):
            if index % world != rank:
                continue
            t0 = time.time()
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(cfg.seed)
                    result = evaluate_candidate(src, cand.arch, pim, hyper, (first, second), heldout, cfg,
                                                tokenizer, device)
            except Exception as e:  # noqa: BLE001 - gathered, then raised on every rank alike
                mine.append({"index": index, "move": cand.moves, "error": f"{e.__class__.__name__}: {e}"})
                continue
            mine.append({"index": index, **cand.record(), **result,
                         "score": score(result, cand.gflops, base, cfg), "reference": index == 0,
                         "search_rank": rank, "seconds": round(time.time() - t0, 3), "proxy_steps": cfg.proxy_steps,
                         "proxy_batch": cfg.proxy_batch, "heldout_batches": cfg.heldout_batches})
            if len(mine) == 1:
                pause_for_test("search-train", Path(f"candidate {index}"), rank)
    finally:
        torch.set_num_threads(threads)
        set_backend(backend)
    pause_for_test("search-gather", Path(f"{len(mine)} records"), rank)
    gathered = [mine]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    failed = [r for r in records if "error" in r]
    if failed:
        raise GrowthError("the search failed on " + "; ".join(f"candidate {r['move'] or '(no growth)'}: "
                                                             f"{r['error']}" for r in failed))
    decision = decide(records, cfg)
    ranked = sorted((r for r in records if not r["reference"]), key=lambda r: r["place"])
    winner = next((r for r in ranked if r["winner"]), None)
    return {"records": ranked + [r for r in records if r["reference"]], "rejected": rejected,
            "winner": winner, "decision": decision, "g": g, "data_samples": samples, "config": cfg.to_dict(),
            "budget": budget.to_dict(), "tokenizer": {"kind": tokenizer.kind, "sha256": tokenizer.sha256}}


def write_record(path: Path, result: dict, step: int, extra: dict | None = None) -> None:
    """OUT/growth/search-step<N>.jsonl, atomically: one line per proxy-trained row, one per rejected move, and
    one summary line (`"summary": true`) with the decision and its compute (plus `extra`, the run's share)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for r in result["records"]:
            f.write(json.dumps({"step": step, "g": result["g"], "data_samples": result["data_samples"], **r}) + "\n")
        for r in result["rejected"]:
            f.write(json.dumps({"step": step, "rejected": True, **r}) + "\n")
        if result.get("decision"):
            tok = {"tokenizer": result["tokenizer"]} if result.get("tokenizer") else {}  # what the proxies read
            f.write(json.dumps({"step": step, "summary": True, **result["decision"], **tok, **(extra or {})}) + "\n")
    tmp.replace(path)


def table(result: dict) -> str:
    """The ranked candidates as a Markdown table, then the decision with its margin and noise."""
    lines = ["| # | move | GFLOPs | params | (tp,pp) | proxy loss | held-out loss | score | s |",
             "|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in result["records"]:
        place = r["place"] or "ref"
        lines.append(f"| {place} | {r['move'] or '(no growth)'} | {r['gflops']:.4g} | "
                     f"{r['params']:,} | ({r['tp']},{r['pp']}) | {r['proxy_loss']:.4f} | {r['heldout_loss']:.4f} | "
                     f"{r['score']:.4f} | {r['seconds']:.1f} |")
    d = result.get("decision")
    if d and d["best"] is not None:
        verdict = f"grow: {d['winner']}" if not d["kept"] else "kept: no growth"
        lines.append(f"\n{verdict} (best {d['best']} leads no growth by {d['margin']:+.4f}; noise {d['noise']:.4f} "
                     f"x margin {d['noise_margin']:g}; search {d['search_gflop']:.4g} GFLOPs)")
    return "\n".join(lines)


# ---- CLI -------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    import argparse
    defaults, pim = SearchConfig(), PIM()
    p = argparse.ArgumentParser(prog="python -m growth.search", description=(
        "Search the growth space around a checkpoint for data D_t; print the ranked candidates and, with --out, "
        "write the grown winner exactly as `python -m growth.grow --move WINNER` would."))
    p.add_argument("--from", dest="source", required=True, help="checkpoint (run, checkpoints or tag folder)")
    p.add_argument("--data", required=True, help="shard spec of D_t (manifest, folder, pattern, comma list)")
    p.add_argument("--g", type=float, help="data-growth ratio; default |D_t| / the data size the checkpoint "
                                           "records (at its last growth, else the one it trained on)")
    p.add_argument("--budget-gflops", type=float, help="max forward GFLOPs per sample")
    p.add_argument("--budget-params", type=int, help="max parameters")
    p.add_argument("--budget-mem-gb", type=float, help="max estimated training memory per rank (GB)")
    p.add_argument("--world", type=int, help="ranks of the run the winner must fit (default: the checkpoint's)")
    p.add_argument("--tp", type=int, help="current tensor-parallel size (default: the checkpoint's)")
    p.add_argument("--pp", type=int, help="current pipeline stages (default: the checkpoint's)")
    p.add_argument("--zero-stage", type=int, default=1, help="ZeRO stage of the run (memory estimate, pp check)")
    p.add_argument("--micro-batch", type=int, help="micro-batch per rank (default: the checkpoint's run config)")
    for name in ("candidates", "proxy_steps", "proxy_batch", "heldout_batches"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    p.add_argument("--penalty", type=float, default=defaults.penalty, help="score += penalty * log2(FLOPs ratio)")
    p.add_argument("--target-ratio", type=float, default=defaults.target_ratio,
                   help="FLOPs growth the trained candidates are chosen around")
    p.add_argument("--always-grow", action="store_true", help="the best candidate wins even when no growth "
                                                                "scores better")
    p.add_argument("--cooldown", type=float, default=defaults.cooldown,
                   help="share of the proxy steps over which its lr decays to 0 before the held-out loss")
    p.add_argument("--rewarm-steps", type=int, help="re-warm of the proxy lr (default: the run's "
                                                     "growth.rewarm_steps)")
    p.add_argument("--noise-margin", type=float, default=defaults.noise_margin,
                   help="a growth must beat no growth by this many measured noise units")
    p.add_argument("--eval-task", default=defaults.eval_task, help="optional eval task in the score")
    p.add_argument("--seed", type=int, help="data seed (default: the run's train.seed)")
    p.add_argument("--pim-m", type=float, default=pim.m)
    p.add_argument("--pim-source", choices=("ema", "last"), default=pim.source)
    p.add_argument("--pim-seed", type=int, default=pim.seed)
    p.add_argument("--split", type=float, help=f"symmetry split of duplicated units (default: the run's "
                                               f"growth.symmetry_split, else {pim.split})")
    p.add_argument("--noise", type=float, help=f"symmetry-breaking noise of duplicated units (default: the run's "
                                               f"growth.symmetry_noise, else {pim.noise})")
    p.add_argument("--depth-init", choices=("copy", "fresh"), help=f"new blocks (default: the run's "
                                                                   f"growth.depth_init, else {pim.depth_init})")
    p.add_argument("--no-inherit", action="store_true", help="no inheritance: candidates start from a fresh "
                                                             "initialisation, moments reset")
    p.add_argument("--dimensions", help="comma list of the families the space may grow (vision.layers, text.width, "
                                        "..., shared; a bare field for both towers; compound); default all")
    p.add_argument("--no-shared-encoder", action="store_true", help="leave the shared encoder out of the space")
    p.add_argument("--out", help="new folder for the grown winner (universal checkpoint)")
    p.add_argument("--record", help="write the candidate records (JSON lines) here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import dataclasses
    import shutil
    import sys
    import tempfile

    from pretrain.data.manifest import count_samples, load_shards
    from pretrain.parallel.layout import Layout, LayoutError

    from .hook import grow_checkpoint

    args = parse_args(argv)
    work = None
    try:
        tag = universal.find_checkpoint(args.source)
        uni = tag
        if not ckpt.is_universal(tag):
            work = Path(tempfile.mkdtemp(prefix="growclip-search-"))
            uni = universal.to_universal(tag, work / tag.name)
        src = Source.read(uni)
        run = src.client.get("run_config") or {}
        shards = load_shards(args.data)
        samples = count_samples(shards)
        g = args.g
        if g is None:
            before = reference_samples(src.client)
            if not before:
                raise GrowthError(f"{tag}: the checkpoint records no data size; pass --g")
            g = samples / before
        lay = src.client.get("layout") or {}
        tp, pp = args.tp or lay.get("tp", 1), args.pp or lay.get("pp", 1)
        layout = Layout.for_world(args.world or tp * pp * lay.get("dp", 1), tp, pp)
        budget = Budget(args.budget_gflops, args.budget_params, args.budget_mem_gb,
                        args.micro_batch or (run.get("train") or {}).get("micro_batch", 64), args.zero_stage,
                        tuple(args.dimensions.split(",")) if args.dimensions else None, not args.no_shared_encoder)
        seed = args.seed if args.seed is not None else (run.get("train") or {}).get("seed", 0)
        cfg = SearchConfig(candidates=args.candidates, proxy_steps=args.proxy_steps, proxy_batch=args.proxy_batch,
                           heldout_batches=args.heldout_batches, penalty=args.penalty, target_ratio=args.target_ratio,
                           noise_margin=args.noise_margin, cooldown=args.cooldown, always_grow=args.always_grow,
                           eval_task=args.eval_task, seed=seed)
        grow_cfg = run.get("growth") or {}  # the run's symmetry split and depth init, unless given here
        split = args.split if args.split is not None else grow_cfg.get("symmetry_split")
        depth_init = args.depth_init or grow_cfg.get("depth_init")
        noise = args.noise if args.noise is not None else grow_cfg.get("symmetry_noise")
        pim = PIM(args.pim_m, args.pim_source, args.pim_seed, not args.no_inherit,
                  **({"split": split} if split is not None else {}),
                  **({"depth_init": depth_init} if depth_init else {}),
                  **({"noise": noise} if noise is not None else {}))
        tok_path = tag / "tokenizer.model"
        hyper = Hyper.of_run(run, src.client["step"])
        if args.rewarm_steps is not None:
            hyper = dataclasses.replace(hyper, rewarm=args.rewarm_steps)
        result = search(src, shards, samples, g, budget, layout, pim, hyper, cfg,
                        load_tokenizer(tok_path, src.arch.text.context))
        print(table(result))
        if args.record:
            write_record(Path(args.record), result, src.client["step"])
        if args.out:
            if result["winner"] is None:
                raise GrowthError("no growth won the search (see the decision above); nothing written"
                                  if result["records"] else "the budget admits no candidate; nothing written")
            w = result["winner"]
            grow_checkpoint(uni, w["move"], args.out, layout=Layout.for_world(layout.world, w["tp"], w["pp"]),
                            pim=pim, tokenizer=tok_path, extra={"data_samples": samples, "search": {
                                "g": g, "data_samples": samples, "winner": w["move"], "record": args.record}})
    except (GrowthError, ckpt.CheckpointError, LayoutError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
