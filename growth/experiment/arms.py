"""What each arm runs: its `pretrain/main.py` arguments, and the equal-compute rule.

**Training FLOPs** of a run (growth/timeline.py's rule): 3 x forward FLOPs per sample x samples, step by step
at the architecture of that step (metrics.jsonl `gflops`, `samples`), plus every growth search (each
proxy-trained candidate's K steps of proxy_batch samples, 3x forward, and its held-out forward passes, from
OUT/growth/search-step<N>.jsonl), paid between step N and N+1.

**The budget** B of a seed is the automatic arm's total training FLOPs, searches included. Each arm that
depends on it (`ref:`) gets the number of steps that spends B at its own FLOPs per step (3 x forward GFLOPs x
samples per step; a hand-written schedule, piecewise), rounded to the nearest step, so its total is B within
half a step. Data stages arrive at the same numbers of samples seen in every arm: stage i arrives after
`stage_steps[i] x samples per step of the automatic arm` samples, which is `data.stage_steps` converted to the
arm's samples per step (the same numbers when the batch and world size are the same); a stage that would
arrive after an arm's last step is never seen by that arm (the cheaper budget runs out first). Ablations of the
automatic arm (other growth settings, `fork:` or not) train the same number of steps on the same stream as it;
their FLOPs differ by what their growths cost, and the report shows each arm's total against B.

**Equal steps** (a plan's `compute: equal_steps`, the growth-pays protocol): every arm trains the automatic arm's
number of steps on the same stream, and its FLOPs are what they are; the question asked is the compute each
needs to reach the plan's `target` arm's final held-out loss (report.py, pays.py). A `fixed` arm is the config
with the arm's own overrides (a fixed architecture, or a growth schedule written into `growth.at_steps` /
`growth.moves`), with no reference to another arm.
"""
from __future__ import annotations

import json
from pathlib import Path

from growth import timeline
from growth.space import Moves
from pretrain.arch import Architecture
from pretrain.config import RunConfig, load_run_config

from .plan import Arm, Plan, PlanError

TRAIN_JSON = "train.json"


def flops_curve(run: Path) -> list[tuple[int, int, float]]:
    """(step, samples seen, cumulative training FLOPs through that step) for every step of metrics.jsonl, a
    search after step N counted before step N+1 (growth/timeline.py's accounting)."""
    rows = timeline.read_metrics(run)
    searches = timeline.searches(run)
    out, total, prev = [], 0.0, 0
    for r in rows:
        total += searches.get(r["step"] - 1, {}).get("gflop", 0.0) * 1e9
        total += 3 * r["gflops"] * 1e9 * (r["samples"] - prev)
        prev = r["samples"]
        out.append((r["step"], r["samples"], total))
    return out


def total_flops(run: Path) -> float:
    curve = flops_curve(run)
    last = curve[-1][0] if curve else 0
    return (curve[-1][2] if curve else 0.0) + timeline.searches(run).get(last, {}).get("gflop", 0.0) * 1e9


def flops_at(curve: list[tuple[int, int, float]], step: int) -> float:
    """Cumulative FLOPs through `step` (0 before the first step)."""
    best = 0.0
    for s, _, f in curve:
        if s > step:
            break
        best = f
    return best


def steps_for(plan: Plan, ref: dict, budget: float, samples_per_step: int, segments: list[tuple[int, float]]) -> int:
    """The steps of an arm that depends on `ref`: `ref`'s own (compute: equal_steps), or those that spend
    `budget` (equal_flops)."""
    if plan.compute == "equal_steps":
        return round(ref["final_step"] * ref["samples_per_step"] / samples_per_step)
    return steps_for_budget(budget, samples_per_step, segments)


def steps_for_budget(budget: float, samples_per_step: int, segments: list[tuple[int, float]]) -> int:
    """Steps that spend `budget` FLOPs when the run has forward GFLOPs per sample segments[i][1] from step
    segments[i][0] on (segments[0][0] == 0). A segment the budget does not reach is never entered."""
    remaining = budget
    for i, (start, gflops) in enumerate(segments):
        per_step = 3 * gflops * 1e9 * samples_per_step
        end = segments[i + 1][0] if i + 1 < len(segments) else None
        if end is None or per_step * (end - start) >= remaining:
            return max(start + 1, start + round(remaining / per_step))
        remaining -= per_step * (end - start)
    raise AssertionError("unreachable")


def base_config(plan: Plan, extra: list[str] = ()) -> RunConfig:
    """The effective run config every arm starts from (the plan's config and overrides)."""
    return load_run_config(plan.config, [*plan.overrides, *extra])


def samples_per_step(cfg: RunConfig, nproc: int) -> int:
    return cfg.train.micro_batch * cfg.train.grad_accum * (nproc // (cfg.parallel.tp * cfg.parallel.pp))


def read_train(run: Path) -> dict:
    path = run / TRAIN_JSON
    if not path.is_file():
        raise PlanError(f"{path}: missing; the arm it belongs to has not finished training")
    return json.loads(path.read_text())


def _stages(cfg: RunConfig, ref: dict, sps: int, steps: int) -> list[str]:
    """data.stages / data.stage_steps overrides: the ref arm's stage arrivals in samples, at this arm's
    samples per step; stages arriving at or after the last step are dropped."""
    if not cfg.data.stages:
        return []
    arrive = [round(s * ref["samples_per_step"] / sps) for s in ref["stage_steps"]]
    kept = [s for s in arrive if 0 < s < steps]
    stages = cfg.data.stages[:len(kept) + 1]
    return [f"data.stages={json.dumps(stages)}", f"data.stage_steps={json.dumps(kept)}"]


def _growths(ref: dict) -> list[dict]:
    return ref.get("growths") or []


def arm_overrides(plan: Plan, arm: Arm, out: Path) -> tuple[list[str], dict]:
    """(run overrides after the plan's own, facts to record): the kind-specific part of an arm's command."""
    common = [f"train.seed={arm.seed}", f"train.out_dir={out / arm.name}", f"train.save_every={plan.heldout.every}"]
    own_first = ["growth.mode=steps"] if arm.kind == "fixed" else []  # a fixed arm's written growth is not auto
    cfg = base_config(plan, [*own_first, *arm.overrides])
    sps = samples_per_step(cfg, plan.nproc)
    facts: dict = {"samples_per_step": sps}
    if arm.kind == "auto":
        if cfg.growth.mode != "auto":
            raise PlanError(f"{arm.name}: kind auto needs growth.mode=auto in the config or overrides")
        return [*arm.overrides, *common], {**facts, "steps": cfg.train.steps, "stage_steps": cfg.data.stage_steps}
    if arm.kind == "fixed":  # the config and the arm's own overrides; growth only where they write one
        return ([*own_first, *arm.overrides, *common],
                {**facts, "steps": cfg.train.steps, "stage_steps": cfg.data.stage_steps})
    ref = read_train(out / arm.ref)
    budget = ref["flops_total"]
    start = Architecture.from_dict(ref["start_arch"])
    final = Architecture.from_dict(ref["final_arch"])
    growths = _growths(ref)
    own = ["growth.mode=steps"]
    if arm.kind == "fixed_small":
        steps = steps_for(plan, ref, budget, sps, [(0, start.flops_per_sample() / 1e9)])
        own += [f"model={json.dumps(start.to_dict())}"]
    elif arm.kind == "fixed_final":
        steps = steps_for(plan, ref, budget, sps, [(0, final.flops_per_sample() / 1e9)])
        own += [f"model={json.dumps(final.to_dict())}"]
        layout = ref.get("final_layout") or {}
        if (layout.get("tp", 1), layout.get("pp", 1)) != (cfg.parallel.tp, cfg.parallel.pp):
            own += [f"parallel.tp={layout['tp']}", f"parallel.pp={layout['pp']}"]
    else:  # hand-written schedule to the same final architecture
        if not growths:
            schedule = []
        elif arm.schedule == "once":  # one written move, start -> final, where the first growth happened
            moves = str(Moves.between(start, final))
            at = round(growths[0]["step"] * ref["samples_per_step"] / sps)
            schedule = [(at, moves, growths[-1]["layout"], final)]
        else:  # replay: the automatic arm's own moves, at the same samples seen
            schedule = [(round(g["step"] * ref["samples_per_step"] / sps), g["move"], g["layout"],
                         Architecture.from_dict(g["to"])) for g in growths]
        segments = [(0, start.flops_per_sample() / 1e9)] + [(s, a.flops_per_sample() / 1e9)
                                                              for s, _, _, a in schedule]
        steps = steps_for(plan, ref, budget, sps, segments)
        schedule = [g for g in schedule if g[0] < steps]
        own += [f"model={json.dumps(start.to_dict())}"]
        if schedule:
            own += [f"growth.at_steps={json.dumps([s for s, *_ in schedule])}",
                    f"growth.moves={json.dumps([m for _, m, *_ in schedule])}"]
            if any((lay["tp"], lay["pp"]) != (cfg.parallel.tp, cfg.parallel.pp) for _, _, lay, _ in schedule):
                own += [f"growth.tp={json.dumps([lay['tp'] for _, _, lay, _ in schedule])}",
                        f"growth.pp={json.dumps([lay['pp'] for _, _, lay, _ in schedule])}"]
        facts["schedule"] = [{"step": s, "move": m} for s, m, *_ in schedule]
    stages = _stages(cfg, ref, sps, steps)
    facts["stage_steps"] = json.loads(stages[1].split("=", 1)[1]) if stages else []
    own += [f"train.steps={steps}", *stages]
    return [*own, *arm.overrides, *common], {**facts, "steps": steps, "budget_flops": budget, "budget_from": arm.ref}


def main_args(plan: Plan, arm: Arm, out: Path, resume: str) -> tuple[list[str], dict]:
    """`pretrain/main.py` arguments of an arm (after the launcher's), and the facts to record."""
    overrides, facts = arm_overrides(plan, arm, out)
    return (["--config", plan.config, "--deepspeed_config", plan.deepspeed_config, "--resume", resume,
             *plan.overrides, *overrides], facts)


def summarize(run: Path, arm: Arm, facts: dict) -> dict:
    """The training summary (train.json) of a finished arm: architectures, growths, FLOPs; read from the run
    folder (metrics.jsonl, search records, the final checkpoint's client state)."""
    from pretrain import checkpoint as ckpt
    base, tag = ckpt.resolve(run)
    client = ckpt.read_client_state(base / tag)
    history = client.get("growth_history") or []
    start = history[0]["from"] if history else client["architecture"]
    growths = []
    for h in history:
        s = h.get("search") or {}
        growths.append({"step": h["source_step"], "move": h["move"], "to": h["to"], "layout": h.get("layout"),
                        "pim": h.get("pim"), "g": s.get("g"), "searched": bool(s),
                        "data_samples": h.get("data_samples")})
    metrics = timeline.read_metrics(run)
    return {"arm": arm.name, "base": arm.base, "kind": arm.kind, "seed": arm.seed, "group": arm.group,
            "fork": arm.fork, "ref": arm.ref, "final_step": client["step"], "samples": client.get("samples"),
            "start_arch": start, "final_arch": client["architecture"], "final_layout": client.get("layout"),
            "growths": growths, "flops_total": total_flops(run), "params_final": metrics[-1].get("params"),
            "gflops_final": metrics[-1]["gflops"], **facts}
