"""Typed run configuration: a YAML file plus `section.key=value` overrides from the command line.

A run config has `model` (an architecture mapping, or a path to one), `data`, `train` and `parallel` sections.
Unknown keys and badly typed values stop the run with a message naming the key, before any training.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .arch import Architecture, ArchitectureError, load_mapping


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


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    steps: int = 1000
    micro_batch: int = 64            # per data-parallel rank, per micro step
    grad_accum: int = 1
    lr: float = 5e-4
    min_lr: float = 0.0
    warmup: int = 100
    weight_decay: float = 0.2
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    seed: int = 0
    ema_decay: float = 0.999         # the PIM momentum model
    log_every: int = 10
    save_every: int = 0              # 0: only at the end
    stop_after: int = 0              # stop (and save) after this step, keeping the schedule of `steps`: for
                                     # jobs split across allocations; 0: run to `steps`
    kernels: str = "auto"            # auto: triton on CUDA, torch elsewhere
    eval_every: int = 0              # run eval tasks every N steps (0: never); see eval/README.md
    eval_tasks: str = "fashion_mnist"  # as `python -m eval --tasks`
    eval_limit: int = 1000           # first N samples of each task (0: all)


@dataclass
class ParallelConfig:
    tp: int = 1                      # tensor-parallel size (megatron-core layers)
    pp: int = 1                      # pipeline stages; dp = world / (tp * pp)


@dataclass
class RunConfig:
    model: Architecture = field(default_factory=Architecture)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    def to_dict(self) -> dict:
        d = {k: dataclasses.asdict(getattr(self, k)) for k in ("data", "train", "parallel")}
        d["model"] = self.model.to_dict()
        return d


def _parse_value(text: str):
    return yaml.safe_load(text)


def _set(d: dict, dotted: str, value, source: str) -> None:
    keys = dotted.split(".")
    node = d
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: '{dotted}' goes through a non-mapping key '{k}'")
    node[keys[-1]] = value


def _build_section(cls, values: dict, name: str, source: str):
    allowed = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(f'{name}.{k}' for k in unknown)}; "
                          f"known: {sorted(allowed)}")
    out = {}
    for k, v in values.items():
        default = allowed[k].default if allowed[k].default is not dataclasses.MISSING else None
        if isinstance(default, bool) or default is None:
            out[k] = v
        elif isinstance(default, tuple):
            if not isinstance(v, (list, tuple)) or len(v) != len(default):
                raise ConfigError(f"{source}: {name}.{k} must be a list of {len(default)} numbers, got {v!r}")
            out[k] = tuple(float(x) for x in v)
        elif isinstance(default, (int, float, str)):
            ok = isinstance(v, type(default)) or (isinstance(default, float) and isinstance(v, int))
            if not ok or isinstance(v, bool):
                raise ConfigError(f"{source}: {name}.{k} must be {type(default).__name__}, got {v!r}")
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
        _set(raw, key, _parse_value(value), f"override {ov!r}")
    unknown = set(raw) - {"model", "data", "train", "parallel"}
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected model, data, train, parallel")
    try:
        arch = Architecture.from_dict(raw.get("model", {}), source=f"{source}: model")
    except (ArchitectureError, TypeError) as e:
        raise ConfigError(str(e)) from e
    cfg = RunConfig(model=arch,
                    data=_build_section(DataConfig, raw.get("data", {}), "data", source),
                    train=_build_section(TrainConfig, raw.get("train", {}), "train", source),
                    parallel=_build_section(ParallelConfig, raw.get("parallel", {}), "parallel", source))
    validate(cfg, source)
    return cfg


def validate(cfg: RunConfig, source: str) -> None:
    t = cfg.train
    for name in ("steps", "micro_batch", "grad_accum", "log_every"):
        if getattr(t, name) <= 0:
            raise ConfigError(f"{source}: train.{name} must be positive, got {getattr(t, name)}")
    if min(t.warmup, t.save_every, t.stop_after, t.eval_every, t.eval_limit) < 0:
        raise ConfigError(f"{source}: train.warmup, save_every, stop_after, eval_every and eval_limit must be >= 0")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"{source}: train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.kernels not in ("auto", "torch", "triton"):
        raise ConfigError(f"{source}: train.kernels must be auto, torch or triton, got {t.kernels!r}")
    if cfg.data.order not in ("sharded", "global"):
        raise ConfigError(f"{source}: data.order must be sharded or global, got {cfg.data.order!r}")
    if not cfg.data.shards:
        raise ConfigError(f"{source}: data.shards is empty; point it at a manifest.json or shard pattern")
    if not cfg.data.tokenizer:
        raise ConfigError(f"{source}: data.tokenizer is empty; train one with `python -m pretrain.data.tokenizer`")
    if not Path(cfg.data.tokenizer).is_file():
        raise ConfigError(f"{source}: data.tokenizer={cfg.data.tokenizer!r} does not exist")
