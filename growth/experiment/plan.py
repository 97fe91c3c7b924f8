"""Experiment plans: a YAML file naming the arms, the base run config they share, the seeds, the eval tasks and
the held-out set. See growth/experiment/README.md for the format; configs/experiments/growclip-offline.yaml is
the issue-11 plan.

An arm of the plan with seeds [0, 1, 2] becomes three run folders, `NAME-s0`, `NAME-s1`, `NAME-s2`. An arm that
depends on another (`ref:` for the fixed final architecture and the hand-written schedule, `fork:` for an
ablation that shares the automatic arm's run up to its first growth) depends on the arm of the same seed, which
runs first.
"""
from __future__ import annotations

import copy
import string
from dataclasses import dataclass, field
from pathlib import Path

import yaml

KINDS = ("auto", "fixed", "fixed_small", "fixed_final", "hand")
COMPUTE = ("equal_flops", "equal_steps")
SCHEDULES = ("once", "replay")
TOP_KEYS = {"name", "description", "launch", "nproc", "config", "deepspeed_config", "overrides", "seeds", "eval",
            "heldout", "prune", "arms", "smoke", "tiny_data", "estimate", "compute", "target", "start", "vars", "only"}
ARM_KEYS = {"name", "kind", "seeds", "group", "overrides", "ref", "fork", "schedule", "label"}


class PlanError(ValueError):
    pass


@dataclass
class Heldout:
    every: int = 50                  # train.save_every: a held-out point every N steps (+ stage boundaries, end)
    batch: int = 128                 # pairs per batch: the contrastive loss depends on it, so it is fixed
    batches: int = 2                 # batches per set
    sets: dict = field(default_factory=dict)  # name -> {source, split[, raw]} (prepared) or {shards: SPEC}


@dataclass
class Arm:
    name: str                        # run folder: BASE-sSEED
    base: str                        # the arm's name in the plan
    kind: str
    seed: int
    group: str                       # main | ablation
    overrides: list[str]
    ref: str | None = None           # run folder whose final architecture / growths / FLOPs this arm needs
    fork: str | None = None          # run folder whose pre-growth save this arm resumes from
    schedule: str = "once"           # hand: once (one written move to the final architecture) | replay
    label: str = ""

    @property
    def needs(self) -> str | None:
        return self.ref or self.fork


@dataclass
class Plan:
    name: str
    path: Path
    text: str
    description: str
    smoke: bool
    launch: str
    nproc: int
    config: str
    deepspeed_config: str
    overrides: list[str]
    seeds: list[int]
    eval_tasks: str
    eval_extra: list                 # [{tasks: "a,b", arms: [run folders]}]: more tasks for some arms
    eval_limit: int
    eval_batch: int
    heldout: Heldout
    prune: bool
    tiny_data: dict | None
    arms: list[Arm]
    compute: str = "equal_flops"     # equal_flops: ref arms spend the automatic arm's FLOPs; equal_steps: its steps
    target: str | None = None        # the arm (plan name) whose final held-out loss is the compute-to-target bar
    start: str | None = None         # the start model's fixed arm: the capacity check is start against target

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise PlanError(f"no arm {name!r} in the plan (arms: {', '.join(a.name for a in self.arms)})")

    def tasks_of(self, arm: Arm) -> str:
        """The eval tasks of an arm: eval.tasks, plus those of every eval.extra entry naming it."""
        extra = [e["tasks"] for e in self.eval_extra if arm.name in e.get("arms", [])]
        return ",".join([self.eval_tasks, *extra])

    def forks_of(self, name: str) -> list[Arm]:
        return [a for a in self.arms if a.fork == name]


def _merge(base: dict, over: dict) -> dict:
    """The smoke section over the plan: mappings merge key by key (but `sets` replaces), `overrides` lists
    append, others replace."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "sets":
            out[k] = _merge(out[k], v)
        elif k == "overrides" and isinstance(v, list):
            out[k] = list(out.get(k) or []) + v
        else:
            out[k] = copy.deepcopy(v)
    return out


def _substitute(node, variables: dict):
    """$NAME in every string (the smoke plan's tiny data, prepared under the output folder)."""
    if isinstance(node, str):
        return string.Template(node).safe_substitute(variables)
    if isinstance(node, list):
        return [_substitute(x, variables) for x in node]
    if isinstance(node, dict):
        return {k: _substitute(v, variables) for k, v in node.items()}
    return node


def load_plan(path: str | Path, smoke: bool = False, variables: dict | None = None) -> Plan:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"{path}: no such plan file")
    text = path.read_text()
    raw = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise PlanError(f"{path}: a plan is a mapping")
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise PlanError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(TOP_KEYS)}")
    if smoke:
        if not isinstance(raw.get("smoke"), dict):
            raise PlanError(f"{path}: --smoke needs a `smoke:` section")
        raw = _merge({k: v for k, v in raw.items() if k != "smoke"}, raw["smoke"])
    given = raw.get("vars") or {}
    if not isinstance(given, dict):
        raise PlanError(f"{path}: vars is a mapping of names to values ($NAME in any string of the plan)")
    raw = _substitute(raw, {**{k: str(v) for k, v in given.items()}, **(variables or {})})
    seeds = raw.get("seeds", [0])
    if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise PlanError(f"{path}: seeds must be distinct integers, got {seeds!r}")
    ev = raw.get("eval") or {}
    ho = raw.get("heldout") or {}
    bad = set(ho) - {"every", "batch", "batches", "sets"}
    if bad:
        raise PlanError(f"{path}: unknown heldout key(s) {sorted(bad)}")
    heldout = Heldout(**ho)
    if heldout.every < 1 or heldout.batch < 2 or heldout.batches < 1:
        raise PlanError(f"{path}: heldout.every, batch (>= 2) and batches must be positive")
    plan = Plan(name=raw.get("name", path.stem), path=path, text=text, description=raw.get("description", ""),
                smoke=smoke,
                launch=raw.get("launch", "process"), nproc=int(raw.get("nproc", 2)),
                config=raw.get("config", "configs/growclip-demo.yaml"),
                deepspeed_config=raw.get("deepspeed_config", "ds_configs/zero2.json"),
                overrides=[str(o) for o in raw.get("overrides") or []], seeds=list(seeds),
                eval_tasks=ev.get("tasks", "fashion_mnist"), eval_extra=list(ev.get("extra") or []),
                eval_limit=int(ev.get("limit", 0)),
                eval_batch=int(ev.get("batch_size", 256)), heldout=heldout, prune=bool(raw.get("prune", True)),
                tiny_data=raw.get("tiny_data"), arms=[], compute=raw.get("compute", "equal_flops"),
                target=raw.get("target"), start=raw.get("start"))
    if plan.launch not in ("process", "inprocess"):
        raise PlanError(f"{path}: launch must be process or inprocess, got {plan.launch!r}")
    if plan.compute not in COMPUTE:
        raise PlanError(f"{path}: compute must be one of {COMPUTE}, got {plan.compute!r}")
    arms = raw.get("arms") or []
    if raw.get("only") is not None:  # a subset of the arms (the smoke plan's: one of each mechanism)
        known = {a.get("name") for a in arms if isinstance(a, dict)}
        if not isinstance(raw["only"], list) or set(raw["only"]) - known:
            raise PlanError(f"{path}: only lists arms of the plan, got {raw['only']!r}")
        arms = [a for a in arms if a.get("name") in raw["only"]]
    plan.arms = order(_expand(arms, plan, path))
    for key in ("target", "start"):
        if getattr(plan, key) is not None and getattr(plan, key) not in {a.base for a in plan.arms}:
            raise PlanError(f"{path}: {key} {getattr(plan, key)!r} is not an arm of the plan")
    folders = {a.name for a in plan.arms}
    for e in plan.eval_extra:
        if not isinstance(e, dict) or not e.get("tasks") or set(e.get("arms", [])) - folders:
            raise PlanError(f"{path}: eval.extra entries are {{tasks: 'a,b', arms: [run folders of this plan]}}, "
                            f"got {e!r}")
    return plan


def _expand(arms: list, plan: Plan, path: Path) -> list[Arm]:
    if not arms:
        raise PlanError(f"{path}: no arms")
    out, names = [], set()
    for i, a in enumerate(arms):
        where = f"{path}: arms[{i}]"
        if not isinstance(a, dict) or "name" not in a:
            raise PlanError(f"{where}: each arm is a mapping with a name")
        unknown = set(a) - ARM_KEYS
        if unknown:
            raise PlanError(f"{where} ({a['name']}): unknown key(s) {sorted(unknown)}; known: {sorted(ARM_KEYS)}")
        kind = a.get("kind", "auto")
        if kind not in KINDS:
            raise PlanError(f"{where} ({a['name']}): kind must be one of {KINDS}, got {kind!r}")
        if a["name"] in names:
            raise PlanError(f"{where}: arm name {a['name']!r} is used twice")
        names.add(a["name"])
        seeds = a.get("seeds", plan.seeds[:1])
        seeds = plan.seeds if seeds == "all" else seeds
        if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
            raise PlanError(f"{where} ({a['name']}): seeds must be 'all' or a list of integers")
        ref, fork = a.get("ref"), a.get("fork")
        if kind in ("fixed_small", "fixed_final", "hand") and not ref:
            raise PlanError(f"{where} ({a['name']}): kind {kind} needs `ref:` (the automatic arm it matches)")
        if kind == "fixed" and ref:
            raise PlanError(f"{where} ({a['name']}): kind fixed is defined by its own overrides; it takes no `ref:`")
        if fork and (kind != "auto" or ref):
            raise PlanError(f"{where} ({a['name']}): `fork:` is for automatic arms without `ref:`")
        overrides = [str(o) for o in a.get("overrides") or []]
        if fork and not all(o.startswith("growth.") for o in overrides):
            raise PlanError(f"{where} ({a['name']}): a forked arm may only change growth.* settings (it shares the "
                            f"run before the first growth with {fork}), got {overrides}")
        schedule = a.get("schedule", "once")
        if schedule not in SCHEDULES:
            raise PlanError(f"{where} ({a['name']}): schedule must be one of {SCHEDULES}")
        group = a.get("group", "main" if len(seeds) > 1 else "ablation")
        for s in seeds:
            out.append(Arm(f"{a['name']}-s{s}", a["name"], kind, s, group, overrides,
                           f"{ref}-s{s}" if ref else None, f"{fork}-s{s}" if fork else None, schedule,
                           a.get("label", "")))
    folders = {a.name for a in out}
    for a in out:
        if a.needs and a.needs not in folders:
            raise PlanError(f"{path}: {a.name} needs {a.needs}, which the plan does not run (same seed)")
        if a.needs and plan_kind(out, a.needs) != "auto":
            raise PlanError(f"{path}: {a.name} needs {a.needs}, which is not an automatic arm")
    return out


def plan_kind(arms: list[Arm], name: str) -> str:
    return next(a.kind for a in arms if a.name == name)


def order(arms: list[Arm]) -> list[Arm]:
    """Plan order, except that an arm runs after the arm it needs (stable topological order)."""
    done, out, pending = set(), [], list(arms)
    while pending:
        for a in pending:
            if not a.needs or a.needs in done:
                out.append(a)
                done.add(a.name)
                pending.remove(a)
                break
        else:
            raise PlanError(f"arms depend on each other in a cycle: {[a.name for a in pending]}")
    return out
