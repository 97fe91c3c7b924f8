"""Typed run configuration: a YAML file plus `section.key=value` overrides from the command line.

A run config has `model` (an architecture mapping, or a path to one, or `{init_from: ...}`: weights the user
already has, pretrain/init_from.py), `data`, `train`, `parallel` and `growth` sections.
Unknown keys and badly typed values stop the run with a message naming the key, before any training.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .arch import Architecture, ArchitectureError, load_mapping
from .init_from import InitError, resolve


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    shards: str = ""                 # manifest.json, a folder with one, a brace pattern, or a comma list
    tokenizer: str = ""              # sentencepiece .model trained by pretrain.data.tokenizer
    workers: int = 1
    shuffle_buffer: int = 1000
    max_pixels: int = 50_000_000     # images whose header says more are skipped and counted
    crop_scale_min: float = 0.9      # RandomResizedCrop scale=(crop_scale_min, 1.0)
    order: str = "sharded"           # sharded: ranks read disjoint shards; global: the same global batches at
                                     # every layout (exact across dp changes; costs dp x reading/decoding)
    stages: list = field(default_factory=list)       # data arriving in stages D1 ⊆ D2 ⊆ ...: one shard spec each
    stage_steps: list = field(default_factory=list)  # the step at which each stage after the first arrives
    refresh_every: int = 0           # re-read data.shards (a growing manifest) every N steps; 0: only at start
    read_attempts: int | None = None  # reads of a remote shard before it is skipped (counted); None: the loader's 3
    read_backoff: float | None = None  # seconds before the first re-read, doubled after each; None: the loader's 1


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    steps: int = 1000
    micro_batch: int = 64            # per data-parallel rank, per micro step
    grad_accum: int = 1
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup: int = 100
    lr_schedule: str = "cosine"      # cosine (warmup, then cosine to min_lr over train.steps) | wsd (warmup,
                                     # stable at lr, then linear decay to min_lr over the last decay_frac of the
                                     # run); pretrain/schedule.py. The growing configs use wsd
    decay_frac: float = 0.2          # wsd: the share of train.steps the final decay takes
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    seed: int = 0
    ema_decay: float = 0.999         # the PIM momentum model
    log_every: int = 10
    save_every: int = 0              # 0: only at the end
    keep_last: int = 0               # after each save, delete the older step tags beyond the N newest (never
                                     # the one `latest` names); 0: keep all (pretrain/checkpoint.py prune)
    stop_after: int = 0              # stop (and save) after this step, keeping the schedule of `steps`: for
                                     # jobs split across allocations; 0: run to `steps`
    kernels: str = "auto"            # auto: per op and shape, the faster in kernels/records.json for this GPU
                                     # (SDPA + torch loss without a record, and on CPUs); torch; triton
    eval_every: int = 0              # run eval tasks every N steps (0: never); see eval/README.md
    eval_tasks: str = "fashion_mnist"  # as `python -m eval --tasks`
    eval_limit: int = 1000           # first N samples of each task (0: all)
    fingerprints: bool = False       # hash every micro-batch and log them per step as "batches" (data-order
                                     # tests, debugging); costs a host copy + SHA1 per batch and a gather per step
    compile: str | bool | None = None  # torch.compile of the model and the loss: None/auto (on for CUDA at pp=1
                                     # below ZeRO-3), on (true), off (false); YAML reads on/off as true/false
    optimizer: str = "auto"          # auto: torch AdamW(fused=True) on CUDA, AdamW (foreach) elsewhere; torch,
                                     # torch_fused, deepspeed_fused (DeepSpeed FusedAdam, JIT-built on first use),
                                     # master_adamw (own fp32 masters and clipping at ZeRO-0; pretrain/README.md)
    ema_warmup: bool = True          # EMA decay min(ema_decay, (1+t)/(10+t)) after t updates (pretrain/ema.py)
    fp8: bool = False                # the towers' linear layers in float8 (torchao; pretrain/fp8.py): needs a
                                     # GPU of compute capability >= 8.9, torchao and tp = 1, else refused


@dataclass
class ParallelConfig:
    tp: int = 1                      # tensor-parallel size (megatron-core layers)
    pp: int = 1                      # pipeline stages; dp = world / (tp * pp)


@dataclass
class GrowthConfig:
    """In-process growth (pretrain/growth_loop.py): after step at_steps[i], grow by moves[i] and go on."""
    at_steps: list = field(default_factory=list)  # ascending, each < train.steps; one value = a list of one
    moves: list = field(default_factory=list)     # one per step, growth/space.py syntax, e.g. "vision.layers+=2"
    tp: list = field(default_factory=list)        # tensor-parallel size after each step; empty: keep the layout
    pp: list = field(default_factory=list)        # pipeline stages after each step; empty: keep
    pim_m: float | None = None                    # PIM momentum in (0, 1]; None: growth/pim.py's default
    pim_source: str | None = None                 # ema | last; None: growth/pim.py's default
    pim_seed: int | None = None                   # seed of the fresh initialisation; None: growth/pim.py's
    pim_inherit: bool | None = None               # false: no inheritance (fresh init, moments reset); None: PIM's
    # mode auto: no moves are written; when the data grows (a new data.stages entry, or a refreshed manifest)
    # by data_ratio or more, a search over the growth space picks the move (growth/search.py, candidates.py)
    mode: str = "steps"                           # steps (at_steps + moves) | auto (data-aware search)
    data_ratio: float = 1.5                       # auto: grow when |D_t| / |D at the last growth| >= this (a 5%
                                                  # larger dataset does not trigger a search)
    rewarm_steps: int = 0                         # after each growth, the lr ramps linearly from 0 back to the
                                                  # scheduled value over this many steps (pretrain/schedule.py)
    symmetry_split: float | None = None           # duplicated units split their fan-out unequally (growth/pim.py
                                                  # PIM.split); 0: plain tiling; None: PIM's default
    symmetry_noise: float | None = None           # antithetic noise on duplicated units, x each tensor's RMS
                                                  # (growth/pim.py PIM.noise); 0: none; None: PIM's default
    depth_init: str | None = None                 # new blocks: copy (stack the block before) | fresh; None: PIM's
    target_ratio: float | None = None             # auto: the FLOPs growth the search aims at (candidates.select);
                                                  # None: growth/search.py's SearchConfig
    noise_margin: float | None = None             # auto: a growth must beat "no growth" by this many noise units
    always_grow: bool | None = None               # auto: the best candidate wins even when "no growth" scores better
    candidates: int | None = None                 # search settings; None: growth/search.py's SearchConfig
    proxy_steps: int | None = None
    proxy_batch: int | None = None
    heldout_batches: int | None = None
    penalty: float | None = None
    eval_task: str | None = None
    max_gflops: float | None = None               # budget (growth/candidates.py: Budget); None: no limit
    max_params: int | None = None
    max_mem_gb: float | None = None
    dimensions: list = field(default_factory=list)  # auto: families the space may grow (growth/candidates.py:
                                                  # vision.layers, text.width, ..., shared, a bare field for both
                                                  # towers, compound); empty: all
    shared_encoder: bool = True                   # auto: false leaves the shared encoder out of the space
    live: bool = True                             # written growths from the running engine (growth/live.py) where
                                                  # it can (tp = pp = 1, ZeRO-1/2); false: save, then grow the save


@dataclass
class RunConfig:
    model: Architecture = field(default_factory=Architecture)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    growth: GrowthConfig = field(default_factory=GrowthConfig)
    init_from: dict | None = None    # model.init_from as given: the weights a fresh run starts from

    def to_dict(self) -> dict:
        d = {k: dataclasses.asdict(getattr(self, k)) for k in ("data", "train", "parallel", "growth")}
        d["model"] = self.model.to_dict()
        if self.init_from:
            d["init_from"] = self.init_from
        return d


def _parse_value(text: str, source: str = "override"):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # its message is several lines, with a caret under the column
        raise ConfigError(f"{source}: the value {text[:80]!r} is not YAML ({str(e).splitlines()[0]})") from None


def _set(d: dict, dotted: str, value, source: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"{source}: '{dotted}' has an empty key; write section.key=value")
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: '{keys[0]}' is set inside a {type(d).__name__}, not a mapping")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: '{dotted}' goes through a non-mapping key '{k}'")
    node[keys[-1]] = value


def _build_section(cls, values: dict, name: str, source: str):
    values = {} if values is None else values  # `parallel:` with nothing under it
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section '{name}' must be a mapping of keys, got {values!r:.80}")
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(f'{name}.{k}' for k in unknown)}; "
                          f"known: {sorted(allowed)}")
    out = {}
    for k, v in values.items():
        default = allowed[k].default if allowed[k].default is not dataclasses.MISSING else None
        if allowed[k].default_factory is list:
            out[k] = list(v) if isinstance(v, (list, tuple)) else [v]
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise ConfigError(f"{source}: {name}.{k} must be true or false, got {v!r:.80}")
            out[k] = v
        elif default is None:
            out[k] = v
        elif isinstance(default, tuple):
            if not isinstance(v, (list, tuple)) or len(v) != len(default):
                raise ConfigError(f"{source}: {name}.{k} must be a list of {len(default)} numbers, got {v!r}")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
                raise ConfigError(f"{source}: {name}.{k} must be a list of {len(default)} finite numbers, got {v!r}")
            out[k] = tuple(float(x) for x in v)
        elif isinstance(default, (int, float, str)):
            ok = isinstance(v, type(default)) or (isinstance(default, float) and isinstance(v, int))
            if not ok or isinstance(v, bool):
                raise ConfigError(f"{source}: {name}.{k} must be {type(default).__name__}, got {v!r:.80}")
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{source}: {name}.{k} must be a finite number, got {v!r}")
            out[k] = type(default)(v)
        else:
            out[k] = v
    return cls(**out)


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    source = str(path) if path else "<defaults>"
    raw = load_mapping(Path(path)) if path else {}
    if isinstance(raw.get("model"), str):  # a path to an architecture file, relative to cwd or to the config
        model = Path(raw["model"])
        model = model if model.is_file() or not path else Path(path).parent / model
        try:
            raw["model"] = Architecture.load(model).to_dict()
        except ArchitectureError as e:
            raise ConfigError(f"{source}: model: {e}") from e
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value")
        key, value = ov.split("=", 1)
        _set(raw, key, _parse_value(value, f"override {ov!r}"), f"override {ov!r}")
    init_from = _init_from(raw, source)
    unknown = set(raw) - {"model", "data", "train", "parallel", "growth"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; "
                          f"expected model, data, train, parallel, growth")
    try:
        arch = Architecture.from_dict(raw.get("model", {}), source=f"{source}: model")
    except (ArchitectureError, TypeError) as e:
        raise ConfigError(str(e)) from e
    cfg = RunConfig(model=arch,
                    data=_build_section(DataConfig, raw.get("data", {}), "data", source),
                    train=_build_section(TrainConfig, raw.get("train", {}), "train", source),
                    parallel=_build_section(ParallelConfig, raw.get("parallel", {}), "parallel", source),
                    growth=_build_section(GrowthConfig, raw.get("growth", {}), "growth", source),
                    init_from=init_from)
    validate(cfg, source)
    return cfg


def _init_from(raw: dict, source: str) -> dict | None:
    """model.init_from: the source's architecture becomes the model section and its tokenizer data.tokenizer."""
    model = raw.get("model")
    if not isinstance(model, dict) or "init_from" not in model:
        return None
    others = sorted(set(model) - {"init_from"})
    if others:
        raise ConfigError(f"{source}: model.init_from takes the architecture from its source; remove "
                          f"{', '.join('model.' + k for k in others)} (on the command line: "
                          f"'model={{init_from: ...}}')")
    try:
        init = resolve(model["init_from"])
    except InitError as e:
        raise ConfigError(f"{source}: {e}") from None
    data = raw.setdefault("data", {})
    given = data.get("tokenizer") if isinstance(data, dict) else None
    if given and (not Path(given).is_file() or Path(given).read_bytes() != init.tokenizer.read_bytes()):
        raise ConfigError(f"{source}: data.tokenizer={given!r} is not model.init_from's tokenizer "
                          f"({init.tokenizer}); leave data.tokenizer out")
    if isinstance(data, dict):
        data["tokenizer"] = str(init.tokenizer)
    raw["model"] = init.arch.to_dict()
    return init.spec


def validate(cfg: RunConfig, source: str) -> None:
    t = cfg.train
    for name in ("steps", "micro_batch", "grad_accum", "log_every"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"{source}: train.{name} must be positive, got {getattr(t, name)}")
    if min(t.warmup, t.save_every, t.stop_after, t.eval_every, t.eval_limit) < 0:
        raise ConfigError(f"{source}: train.warmup, save_every, stop_after, eval_every and eval_limit must be >= 0")
    if t.keep_last < 0:
        raise ConfigError(f"{source}: train.keep_last must be >= 0 (0 keeps every checkpoint), got {t.keep_last}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"{source}: train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.lr_schedule not in ("cosine", "wsd"):
        raise ConfigError(f"{source}: train.lr_schedule must be cosine or wsd, got {t.lr_schedule!r}")
    if not 0.0 <= t.decay_frac <= 1.0:
        raise ConfigError(f"{source}: train.decay_frac must be in [0, 1], got {t.decay_frac}")
    if t.kernels not in ("auto", "torch", "triton"):
        raise ConfigError(f"{source}: train.kernels must be auto, torch or triton, got {t.kernels!r}")
    d = cfg.data
    if d.read_attempts is not None and (isinstance(d.read_attempts, bool) or not isinstance(d.read_attempts, int)
                                        or d.read_attempts < 1):
        raise ConfigError(f"{source}: data.read_attempts must be an integer >= 1, got {d.read_attempts!r}")
    if d.read_backoff is not None and (isinstance(d.read_backoff, bool) or not isinstance(d.read_backoff, (int, float))
                                       or not 0 <= d.read_backoff <= 3600):
        raise ConfigError(f"{source}: data.read_backoff must be a number of seconds in [0, 3600], got "
                          f"{d.read_backoff!r}")
    if cfg.data.order not in ("sharded", "global"):
        raise ConfigError(f"{source}: data.order must be sharded or global, got {cfg.data.order!r}")
    validate_stages(cfg, source)
    if not cfg.data.tokenizer:
        raise ConfigError(f"{source}: data.tokenizer is empty; train one with `python -m pretrain.data.tokenizer`")
    if not Path(cfg.data.tokenizer).is_file():
        raise ConfigError(f"{source}: data.tokenizer={cfg.data.tokenizer!r} does not exist")
    validate_growth(cfg.growth, cfg.train.steps, source)


def validate_stages(cfg: RunConfig, source: str) -> None:
    """Shapes only; that each stage holds the one before is checked when the stages are resolved."""
    d, g = cfg.data, cfg.growth
    if not d.shards and not d.stages:
        raise ConfigError(f"{source}: data.shards is empty; point it at a manifest.json or shard pattern")
    if d.shards and d.stages:
        raise ConfigError(f"{source}: set data.shards or data.stages, not both")
    if d.stage_steps and not d.stages:
        raise ConfigError(f"{source}: data.stage_steps is set but data.stages is empty; name the stages")
    if d.stages and len(d.stage_steps) != len(d.stages) - 1:
        raise ConfigError(f"{source}: data.stage_steps has {len(d.stage_steps)} entries for {len(d.stages)} "
                          f"data.stages; give the step at which each stage after the first arrives")
    if not all(_is_int(s) and 0 < s < cfg.train.steps for s in d.stage_steps) or d.stage_steps != sorted(
            set(d.stage_steps)):
        raise ConfigError(f"{source}: data.stage_steps {d.stage_steps} must be strictly ascending integers in "
                          f"1..train.steps-1 ({cfg.train.steps - 1})")
    for i, spec in enumerate(d.stages):
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"{source}: data.stages[{i}] is {spec!r}; each stage is a shard spec (a manifest, "
                              f"folder, pattern or comma list) that holds the stage before it")
    if d.refresh_every < 0:
        raise ConfigError(f"{source}: data.refresh_every must be >= 0, got {d.refresh_every}")
    if g.mode not in ("steps", "auto"):
        raise ConfigError(f"{source}: growth.mode must be steps or auto, got {g.mode!r}")
    if g.mode == "auto" and (g.at_steps or g.moves):
        raise ConfigError(f"{source}: growth.mode=auto picks the moves itself; remove growth.at_steps/moves")
    if g.mode == "auto" and (g.tp or g.pp):
        raise ConfigError(f"{source}: growth.mode=auto picks the layout itself; remove growth.tp/pp")
    if g.data_ratio < 1.0:
        raise ConfigError(f"{source}: growth.data_ratio must be >= 1, got {g.data_ratio}")
    for key in ("candidates", "proxy_steps", "proxy_batch", "heldout_batches", "max_params"):
        v = getattr(g, key)
        if v is not None and (not _is_int(v) or v < 1):
            raise ConfigError(f"{source}: growth.{key} must be a positive integer, got {v!r}")
    for key in ("penalty", "max_gflops", "max_mem_gb", "noise_margin"):
        v = getattr(g, key)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"{source}: growth.{key} must be a number >= 0, got {v!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_growth(g: GrowthConfig, steps: int, source: str) -> None:
    """Shapes and syntax only: whether each move fits the architecture and layout the run has at that step is
    checked by pretrain/growth_loop.py once the (possibly resumed) starting architecture is known."""
    if not all(_is_int(s) for s in g.at_steps):
        raise ConfigError(f"{source}: growth.at_steps must be a list of integers, got {g.at_steps!r}")
    if any(not 0 < s < steps for s in g.at_steps):
        raise ConfigError(f"{source}: growth.at_steps {g.at_steps} must lie in 1..train.steps-1 ({steps - 1})")
    if any(a >= b for a, b in zip(g.at_steps, g.at_steps[1:])):
        raise ConfigError(f"{source}: growth.at_steps {g.at_steps} must be strictly ascending")
    if len(g.moves) != len(g.at_steps):
        raise ConfigError(f"{source}: growth.moves has {len(g.moves)} entries but growth.at_steps has "
                          f"{len(g.at_steps)}; give one move per step (quote a compound move inside a list: "
                          f"'[\"vision.layers+=2,text.width*=2\"]')")
    for name in ("tp", "pp"):
        sizes = getattr(g, name)
        if sizes and len(sizes) != len(g.at_steps):
            raise ConfigError(f"{source}: growth.{name} has {len(sizes)} entries but growth.at_steps has "
                              f"{len(g.at_steps)}; give one per step, or none to keep the layout")
        if not all(_is_int(s) and s >= 1 for s in sizes):
            raise ConfigError(f"{source}: growth.{name} must be integers >= 1, got {sizes!r}")
    if g.pim_m is not None and (not isinstance(g.pim_m, (int, float)) or isinstance(g.pim_m, bool)
                                or not 0 < g.pim_m <= 1):
        raise ConfigError(f"{source}: growth.pim_m must be a number in (0, 1], got {g.pim_m!r}")
    if g.pim_source not in (None, "ema", "last"):
        raise ConfigError(f"{source}: growth.pim_source must be ema or last, got {g.pim_source!r}")
    if g.pim_seed is not None and not _is_int(g.pim_seed):
        raise ConfigError(f"{source}: growth.pim_seed must be an integer, got {g.pim_seed!r}")
    if not (g.pim_inherit is None or isinstance(g.pim_inherit, bool)) or not isinstance(g.shared_encoder, bool):
        raise ConfigError(f"{source}: growth.pim_inherit and growth.shared_encoder must be true or false, got "
                          f"{g.pim_inherit!r} and {g.shared_encoder!r}")
    if not _is_int(g.rewarm_steps) or g.rewarm_steps < 0:
        raise ConfigError(f"{source}: growth.rewarm_steps must be an integer >= 0, got {g.rewarm_steps!r}")
    if g.target_ratio is not None and (not isinstance(g.target_ratio, (int, float)) or isinstance(g.target_ratio, bool)
                                       or g.target_ratio <= 1):
        raise ConfigError(f"{source}: growth.target_ratio must be a number > 1, got {g.target_ratio!r}")
    if g.symmetry_split is not None and (not isinstance(g.symmetry_split, (int, float))
                                         or isinstance(g.symmetry_split, bool) or not 0 <= g.symmetry_split < 1):
        raise ConfigError(f"{source}: growth.symmetry_split must be a number in [0, 1), got {g.symmetry_split!r}")
    if g.symmetry_noise is not None and (not isinstance(g.symmetry_noise, (int, float))
                                         or isinstance(g.symmetry_noise, bool) or not 0 <= g.symmetry_noise < 1):
        raise ConfigError(f"{source}: growth.symmetry_noise must be a number in [0, 1), got {g.symmetry_noise!r}")
    if g.always_grow is not None and not isinstance(g.always_grow, bool):
        raise ConfigError(f"{source}: growth.always_grow must be true or false, got {g.always_grow!r}")
    if g.depth_init not in (None, "copy", "fresh"):
        raise ConfigError(f"{source}: growth.depth_init must be copy or fresh, got {g.depth_init!r}")
    if g.dimensions:
        from growth.candidates import check_dimensions
        from growth.errors import GrowthError
        try:
            check_dimensions(g.dimensions)
        except GrowthError as e:
            raise ConfigError(f"{source}: growth.dimensions: {e}") from e
    if g.moves:  # growth/ imports pretrain/, so it is imported only here, when a run grows
        from growth.errors import GrowthError
        from growth.space import Moves
        for i, move in enumerate(g.moves):
            if not isinstance(move, str):
                raise ConfigError(f"{source}: growth.moves[{i}] must be a move string, got {move!r}")
            try:
                Moves.parse(move)
            except GrowthError as e:
                raise ConfigError(f"{source}: growth.moves[{i}]: {e}") from e
