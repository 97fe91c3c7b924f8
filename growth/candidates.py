"""The dynamic growth space: candidate architectures around the current one, sized by how much the data grew.

`generate(arch, g, budget, layout)` is a pure function. With g = |D_t| / |D_(t-1)| (> 1 when the data grew):

- **Single moves, per tower** (vision, text): depth, width, heads and MLP. Each dimension always offers its
  smallest move; larger ones are allowed up to a factor g on that dimension's size, so the space widens as the
  data grows:
  - depth `layers+=d`, d in {1, max(1, floor(layers·(g−1)))};
  - width `width*=k`, integer k in {2, max(2, floor(g))} (integer factors are exact; see growth/README.md);
  - heads `heads+=h`, h in {1, max(1, floor(heads·(g−1)))} (head_dim kept: the attention inner dim grows);
  - MLP `mlp_ratio+=r`, r in {1, max(1, floor(mlp_ratio·(g−1)))}.
- **Shared encoder**: with none yet, `shared.layers=d` (d in {1, max(1, floor(g))}) at the width of the wider
  tower; with one, `shared.layers+=d` as depth above.
- **Large moves** (G_stack, bert2BERT): depth ×2 by stacking (`layers*=2`) and width ×2 (`width*=2`) of each
  tower, singly and as compound moves (every combination of two or more of the four), so one growth can reach
  several times the FLOPs per sample (both widths ×2 is about 4×, everything ×2 about 8×).
- **Compound moves**: every pair of the smallest single moves of different dimensions or towers (both towers
  deepened, depth plus shared encoder, ...).

Moves that reach the same architecture are offered once (the first in this order). Each candidate is then checked
against the budget: forward FLOPs per sample, parameters, and a layout that can hold it (`place`): the current
(tp, pp) if the target is valid there and its estimated memory per rank fits, else the smallest valid one (fewest
model-parallel ranks tp·pp, then fewer pipeline stages). A candidate no layout can hold is rejected with the
reason.

When more candidates pass than the search may train (`select`), they are chosen by a **target for compute
growth**, `target_ratio` (`growth.target_ratio`, default 4 in growth/search.py: the literature's few large jumps,
G_stack's ×4): candidates are taken round-robin over families (each single dimension of each tower, the shared
encoder, each compound family), so no family is tried twice before every family has been tried once; inside a
family, and among the families of one round, in order of how close their FLOPs ratio is to the target (log
scale), ties by move text. The data still sizes the space (g above) and decides when a search runs
(`growth.data_ratio`); the target decides which of the admitted moves are worth proxy-training.

The space can be restricted (`Budget.dimensions`, `Budget.shared`; `growth.dimensions`, `growth.shared_encoder`;
the ablations of issue 11): `dimensions` names the families a move may touch (`vision.layers`, `text.width`, ...,
`shared`; a bare field such as `layers` means both towers) and `compound` (combined moves, allowed only when
every part is allowed); `shared=False` removes the shared encoder. A move outside it is rejected with the reason.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass

from pretrain.arch import Architecture
from pretrain.parallel.layout import Layout, LayoutError

from .errors import GrowthError
from .space import Moves, check_growth
from .summary import parameter_counts

TOWER_FIELDS = ("layers", "width", "heads", "mlp_ratio")
FAMILIES = tuple(f"{t}.{f}" for t in ("vision", "text") for f in TOWER_FIELDS) + ("shared",)
STATE_BYTES = {"weights": 4, "grads": 4, "adam": 8}  # fp32 training; ZeRO shards adam (1), grads (2), weights (3)


@dataclass(frozen=True)
class Budget:
    """Limits a grown architecture must meet; None means no limit."""
    max_gflops: float | None = None   # forward GFLOPs per image-text pair
    max_params: int | None = None     # parameters of the whole model
    max_mem_gb: float | None = None   # estimated training memory per rank (weights, grads, Adam, activations)
    micro_batch: int = 64             # per rank, for the activation estimate
    zero_stage: int = 1
    dimensions: tuple | None = None   # families a move may touch (FAMILIES, a bare field = both towers,
                                      # "compound"); None: all
    shared: bool = True               # False: no shared-encoder moves
    max_head_dim: int | None = None   # the attention kernel's limit (Triton's 128 when it runs); None: none

    def __post_init__(self):
        if self.dimensions is not None:
            object.__setattr__(self, "dimensions", tuple(self.dimensions))
            check_dimensions(self.dimensions)

    def to_dict(self) -> dict:
        return asdict(self)

    def families(self) -> set[str]:
        """The single-move families of the space, plus "compound" when compound moves are allowed."""
        names = set(FAMILIES) | {"compound"} if self.dimensions is None else set()
        for d in self.dimensions or ():
            names |= {f"{t}.{d}" for t in ("vision", "text")} if d in TOWER_FIELDS else {d}
        return names - ({"shared"} if not self.shared else set())

    def outside(self, moves: str) -> str:
        """Why a move lies outside the space ("" when inside)."""
        allowed, fam = self.families(), family(moves)
        parts = fam.split("+")
        if len(parts) > 1 and "compound" not in allowed:
            return "compound moves are not in the growth space (growth.dimensions)"
        missing = [p for p in parts if p not in allowed]
        if missing:
            why = "growth.shared_encoder is off" if missing == ["shared"] and not self.shared else "growth.dimensions"
            return f"{'+'.join(missing)} is not in the growth space ({why})"
        return ""


def check_dimensions(dimensions) -> None:
    """GrowthError naming an unknown entry of a dimensions list."""
    known = set(FAMILIES) | set(TOWER_FIELDS) | {"compound"}
    bad = [d for d in dimensions if d not in known]
    if bad or not dimensions:
        raise GrowthError(f"growth dimensions {list(dimensions)}: {'unknown ' + str(bad) if bad else 'empty'}; "
                          f"known: {', '.join(FAMILIES)}, a bare field ({', '.join(TOWER_FIELDS)}) for both "
                          f"towers, and compound")


@dataclass(frozen=True)
class Candidate:
    moves: str
    family: str
    arch: Architecture
    gflops: float
    params: int
    mem_gb: float
    tp: int
    pp: int

    def record(self) -> dict:
        return {"move": self.moves, "family": self.family, "gflops": self.gflops, "params": self.params,
                "mem_gb": round(self.mem_gb, 4), "tp": self.tp, "pp": self.pp, "to": self.arch.to_dict()}


@functools.lru_cache(maxsize=4096)
def total_params(arch: Architecture) -> int:
    return parameter_counts(arch)["total"]


def _sizes(smallest: int, largest: int) -> list[int]:
    return sorted({smallest, max(smallest, largest)})


def single_moves(arch: Architecture, g: float) -> list[str]:
    """The single-dimension moves the space offers at data-growth ratio g (see the module docstring)."""
    grow = max(g, 1.0) - 1.0
    moves = []
    for name in ("vision", "text"):
        t = getattr(arch, name)
        moves += [f"{name}.layers+={d}" for d in _sizes(1, math.floor(t.layers * grow))]
        moves += [f"{name}.width*={k}" for k in _sizes(2, math.floor(max(g, 1.0)))]
        moves += [f"{name}.heads+={h}" for h in _sizes(1, math.floor(t.heads * grow))]
        moves += [f"{name}.mlp_ratio+={r}" for r in _sizes(1, math.floor(t.mlp_ratio * grow))]
    moves += [f"{name}.layers*=2" for name in ("vision", "text")]
    if arch.shared.layers:
        moves += [f"shared.layers+={d}" for d in _sizes(1, math.floor(arch.shared.layers * grow))]
    else:
        width = max(arch.vision.width, arch.text.width)
        heads = max(arch.vision.heads, arch.text.heads)
        moves += [f"shared.layers={d},shared.width={width},shared.heads={heads}"
                  for d in _sizes(1, math.floor(max(g, 1.0)))]
    return moves


def family(moves: str) -> str:
    """The tower.dimension pairs a move touches: 'vision.layers', 'shared', 'text.heads+vision.layers'."""
    parts = set()
    for m in Moves.parse(moves).moves:
        parts.add("shared" if m.tower == "shared" else f"{m.tower}.{m.field}")
    return "+".join(sorted(parts))


LARGE = ("vision.layers*=2", "text.layers*=2", "vision.width*=2", "text.width*=2")


def compound_moves(arch: Architecture, g: float) -> list[str]:
    """Pairs of the smallest single moves of different families, then every combination of two or more of the
    large moves (depth ×2 and width ×2 of each tower)."""
    smallest: dict[str, str] = {}
    for move in single_moves(arch, g):
        smallest.setdefault(family(move), move)
    pairs = [f"{a},{b}" for a, b in itertools.combinations(smallest.values(), 2)]
    large = [",".join(c) for k in range(2, len(LARGE) + 1) for c in itertools.combinations(LARGE, k)]
    return pairs + [m for m in large if m not in pairs]


def memory_gb(arch: Architecture, layout: Layout, budget: Budget) -> float:
    """Training memory per rank, estimated: fp32 weights, gradients and Adam moments of this rank's share
    (1/(tp·pp) of the model, and 1/dp of what the ZeRO stage shards), plus activations of one micro-batch
    (Megatron's per-layer estimate s·b·h·(34 + 5·a·s/h) bytes, doubled for fp32, divided by tp, for the
    layers of one pipeline stage)."""
    params = total_params(arch) / (layout.tp * layout.pp)
    z = budget.zero_stage
    per_param = (STATE_BYTES["weights"] / (layout.dp if z >= 3 else 1)
                 + STATE_BYTES["grads"] / (layout.dp if z >= 2 else 1)
                 + STATE_BYTES["adam"] / (layout.dp if z >= 1 else 1))
    acts = 0.0
    for t, tokens, layers in ((arch.vision, arch.vision.tokens, arch.vision.layers),
                              (arch.text, arch.text.context, arch.text.layers),
                              (arch.shared, arch.vision.tokens + arch.text.context, arch.shared.layers)):
        per_layer = tokens * budget.micro_batch * t.width * (34 + 5 * t.heads * tokens / t.width)
        acts += 2 * per_layer * math.ceil(layers / layout.pp) / layout.tp
    return (params * per_param + acts) / 2 ** 30


def layouts_by_size(world: int) -> list[Layout]:
    """Every (tp, pp) of this world size, smallest model-parallel size first, then fewer pipeline stages."""
    out = [Layout.for_world(world, tp, pp) for tp in range(1, world + 1) for pp in range(1, world + 1)
           if world % (tp * pp) == 0]
    return sorted(out, key=lambda lay: (lay.tp * lay.pp, lay.pp, lay.tp))


def place(arch: Architecture, layout: Layout, budget: Budget) -> tuple[Layout | None, str]:
    """(layout, "") for the current layout when it holds arch, else the smallest that does; (None, why)."""
    why = ""
    for lay in [layout] + [x for x in layouts_by_size(layout.world) if x != layout]:
        try:
            lay.validate(arch, budget.zero_stage)
        except LayoutError as e:
            why = why or str(e)
            continue
        mem = memory_gb(arch, lay, budget)
        if budget.max_mem_gb is not None and mem > budget.max_mem_gb:
            why = why or f"estimated {mem:.2f} GB per rank at (tp={lay.tp}, pp={lay.pp}) > {budget.max_mem_gb} GB"
            continue
        return lay, ""
    return None, f"no layout of {layout.world} ranks holds it: {why}"


def generate(arch: Architecture, g: float, budget: Budget, layout: Layout) -> tuple[list[Candidate], list[dict]]:
    """(candidates within the budget, rejected moves with their reasons), in generation order."""
    kept, rejected, seen = [], [], set()
    for moves in single_moves(arch, g) + compound_moves(arch, g):
        if why := budget.outside(moves):
            rejected.append({"move": moves, "reason": why})
            continue
        try:
            dst = Moves.parse(moves).apply(arch)
            check_growth(arch, dst)
        except GrowthError as e:
            rejected.append({"move": moves, "reason": str(e)})
            continue
        if dst in seen:
            continue  # the same architecture as an earlier move (vision.layers+=2 and vision.layers*=2 at 2 layers)
        seen.add(dst)
        gflops, params = dst.flops_per_sample() / 1e9, total_params(dst)
        reason = ""
        if budget.max_gflops is not None and gflops > budget.max_gflops:
            reason = f"{gflops:.4g} GFLOPs/sample > budget {budget.max_gflops:g}"
        elif budget.max_params is not None and params > budget.max_params:
            reason = f"{params:,} parameters > budget {budget.max_params:,}"
        elif budget.max_head_dim and max(t.attn_head_dim for t in (dst.vision, dst.text, dst.shared)
                                         if t.layers) > budget.max_head_dim:
            reason = f"a head_dim above the attention kernel's {budget.max_head_dim}"
        lay = None
        if not reason:
            lay, reason = place(dst, layout, budget)
        if reason:
            rejected.append({"move": moves, "reason": reason})
            continue
        kept.append(Candidate(moves, family(moves), dst, gflops, params, memory_gb(dst, lay, budget), lay.tp,
                              lay.pp))
    return kept, rejected


def select(candidates: list[Candidate], n: int, target_ratio: float, src: Architecture) -> list[Candidate]:
    """At most n candidates, closest to the FLOPs growth target_ratio first (see the module docstring);
    generation order kept."""
    if n <= 0 or len(candidates) <= n:
        return list(candidates)
    base = src.flops_per_sample() / 1e9
    target = math.log(max(target_ratio, 1.0))

    def key(c: Candidate):
        return abs(math.log(c.gflops / base) - target), c.moves

    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.family, []).append(c)
    queues = [sorted(cs, key=key) for cs in groups.values()]
    chosen: list[Candidate] = []
    while len(chosen) < n:
        for q in sorted((q for q in queues if q), key=lambda q: key(q[0])):
            if len(chosen) < n:
                chosen.append(q.pop(0))
    order = {c.moves: i for i, c in enumerate(candidates)}
    return sorted(chosen, key=lambda c: order[c.moves])
