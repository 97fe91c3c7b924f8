"""Kinds `config` (run config YAML and `section.key=value` overrides) and `ds` (DeepSpeed JSON and `ds.`
overrides). Each case runs `pretrain.main.main` in-process up to where DeepSpeed would start."""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import yaml

from pretrain.arch import Architecture
from pretrain.config import DataConfig, GrowthConfig, ParallelConfig, TrainConfig

from .harness import Case, Cli
from .values import BAD_VALUES, must_fail, yaml_text

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"vision": {"layers": 2, "width": 64, "heads": 2, "mlp_ratio": 4.0, "patch": 7, "image_size": 28},
         "text": {"layers": 2, "width": 64, "heads": 2, "mlp_ratio": 4.0, "vocab": 512, "context": 16},
         "shared": {"layers": 0, "width": 64, "heads": 2, "mlp_ratio": 4.0}, "embed_dim": 64}
SECTIONS = {"data": DataConfig, "train": TrainConfig, "parallel": ParallelConfig, "growth": GrowthConfig}
NOT_SET = {"train.out_dir"}  # its own op keeps every out_dir inside the case folder


def _fields() -> dict[str, object]:
    """Every settable key of a run config -> its default (a list field -> [])."""
    keys = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else []
            keys[f"{section}.{f.name}"] = default
    arch = Architecture()
    for tower in ("vision", "text", "shared"):
        for f in dataclasses.fields(getattr(arch, tower)):
            keys[f"model.{tower}.{f.name}"] = getattr(getattr(arch, tower), f.name)
    keys["model.embed_dim"] = arch.embed_dim
    return {k: v for k, v in keys.items() if k not in NOT_SET}


FIELDS = _fields()


def _must_fail(key: str, default, label: str) -> bool:
    if isinstance(default, (list, tuple)):
        return True  # every list field has a shape its validation checks; no bad value fits it
    if default is None:  # optional settings: each is validated against its own range or choices
        return label in ("nan", "inf", "neg_inf", "dict", "list", "long_str", "nul", "unicode", "url", "dotdot")
    if key.startswith("model.") and label in ("neg", "neg_huge", "zero"):
        return not (key == "model.shared.layers" and label == "zero")  # plain CLIP has no shared layers
    return must_fail(default, label)


def base_config(fx: dict, root: Path) -> dict:
    return {"model": json.loads(json.dumps(SMALL)),
            "data": {"shards": fx["shards"], "tokenizer": fx["tokenizer"], "workers": 0, "shuffle_buffer": 20},
            "train": {"out_dir": str(root / "out"), "steps": 5, "micro_batch": 8, "warmup": 1, "log_every": 1}}


def _put(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for k in parents:
        d = d.setdefault(k, {})
    d[last] = value


def _pop(d: dict, dotted: str) -> bool:
    *parents, last = dotted.split(".")
    for k in parents:
        d = d.get(k, {})
        if not isinstance(d, dict):
            return False
    return d.pop(last, None) is not None


def _argv(root: Path, config: Path, ds: str | None = None, overrides=(), extra=()) -> list[str]:
    return ["--config", str(config), "--deepspeed_config", ds or str(ROOT / "ds_configs/zero2.json"), *extra,
            *overrides]


def _write(root: Path, cfg: dict, name: str = "run.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
    return path


YAML_TEXTS = [
    ("invalid YAML", "train: {steps: 5\n"), ("a list", "- 1\n- 2\n"), ("a scalar", "42\n"), ("empty", ""),
    ("binary", "\x00\x01\xff\xfe garbage"), ("python tag", "train: !!python/object/apply:os.system ['true']\n"),
    ("tabs", "train:\n\tsteps: 5\n"), ("duplicate sections", "train: {steps: 5}\ntrain: {steps: 6}\n"),
    ("deep nesting", "train: " + "[" * 5000 + "]" * 5000 + "\n"), ("anchors bomb", "a: &a [1,1,1,1,1,1,1,1,1]\n"
     "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
     "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"),
]
OVERRIDES = [
    "train.steps", "=5", ".=1", "train..steps=1", "train.steps.x=1", "train=5", "ünï=1", "model=abc",
    "train.steps=[", "train.steps={", "train.steps=: :", "data.shards=", "data=[1, 2]", "train.steps=5=6",
    "model.vision=3", "growth.moves=[\"vision.layers+=\"]", "growth.at_steps=[2] growth.moves=[x]", "--steps=3",
    "parallel.tp=0", "train.betas=[0.9]", "model={init_from: 42}", "model={init_from: /nonexistent}",
    "model={init_from: {}}", "train.steps=0x10", "train.lr=1e999", "train.steps=!!binary aGVsbG8=",
]


def config_case(rng: random.Random, root: Path, fx: dict) -> Case:
    cfg = base_config(fx, root)
    op = rng.choice(["set_file", "set_override", "set_override", "unknown", "delete", "section", "yaml", "override",
                     "path", "out_dir"])
    overrides: list[str] = []
    if op.startswith("set"):
        key = rng.choice(sorted(FIELDS))
        label, value = rng.choice(BAD_VALUES)
        expect = "error" if _must_fail(key, FIELDS[key], label) else "error_or_accept"
        names = [key, key.split(".", 1)[1], key.rsplit(".", 1)[1]]
        if op == "set_file":
            _put(cfg, key, value)
        else:
            overrides.append(f"{key}={yaml_text(value)}")
        return Case("config", f"{op} {key}={label}", Cli(_main(), _argv(root, _write(root, cfg), overrides=overrides)),
                    expect, names)
    if op == "unknown":
        section = rng.choice(["data", "train", "parallel", "growth", "model", "model.vision", ""])
        name = rng.choice(["stepz", "ünïcode", "x" * 300, "Steps", "1", "__class__"])
        key = f"{section}.{name}" if section else name
        if rng.random() < 0.5:
            _put(cfg, key, 1)
        else:
            overrides.append(f"{key}=1")
        return Case("config", f"unknown key {key[:40]}", Cli(_main(), _argv(root, _write(root, cfg),
                                                                             overrides=overrides)),
                    "error", [name[:40], section or name[:40]])
    if op == "delete":
        key = rng.choice(["data.shards", "data.tokenizer", "model", "data", "train", "train.out_dir",
                          "model.vision", "model.text.vocab", "train.steps"])
        _pop(cfg, key)
        expect = "error" if key in ("data.shards", "data.tokenizer", "data") else "error_or_accept"
        return Case("config", f"delete {key}", Cli(_main(), _argv(root, _write(root, cfg))), expect,
                    [key, "data.shards", "data.tokenizer", "vocab"])
    if op == "section":
        section = rng.choice(["data", "train", "parallel", "growth", "model"])
        cfg[section] = rng.choice([5, [1, 2], "abc", None, True])
        expect = "error_or_accept" if cfg[section] is None and section != "data" else "error"  # empty: defaults
        return Case("config", f"section {section}={cfg[section]!r}", Cli(_main(), _argv(root, _write(root, cfg))),
                    expect, [section])
    if op == "yaml":
        what, text = rng.choice(YAML_TEXTS)
        path = root / "run.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        return Case("config", f"config file: {what}", Cli(_main(), _argv(root, path)), "error", [str(path)])
    if op == "override":
        text = rng.choice(OVERRIDES)
        overrides = text.split(" ")
        ok = text in ("train.steps=0x10",)  # YAML 1.1 reads 0x10 as 16
        return Case("config", f"override {text!r}", Cli(_main(), _argv(root, _write(root, cfg), overrides=overrides)),
                    "error_or_accept" if ok else "error",
                    [o.split("=", 1)[0][:40] or o for o in overrides] + ["override", "model", "init_from"])
    if op == "path":
        what = rng.choice(["missing", "folder", "model missing", "model folder", "model list"])
        if what == "missing":
            path = root / "nope.yaml"
        elif what == "folder":
            path = root
        else:
            cfg["model"] = {"model missing": "nope.yaml", "model folder": str(root), "model list": ["a"]}[what]
            path = _write(root, cfg)
        return Case("config", f"path: {what}", Cli(_main(), _argv(root, path)), "error",
                    [str(path), "nope.yaml", str(root), "model"])
    (root / "file").write_text("in the way")
    out = rng.choice([root / "file", root / "file" / "run", root / ("x" * 300), root / "a\x00b",
                      root / "ünï 🙂", root / "out" / "..", root / "out" / "deep" / "er"])
    cfg["train"]["out_dir"] = str(out)
    ok = out.name.startswith("ünï") or out.name in ("er", "..")
    return Case("config", f"out_dir {out.name[:20]!r}", Cli(_main(), _argv(root, _write(root, cfg))),
                "error_or_accept" if ok else "error", ["train.out_dir"])


# ---- DeepSpeed JSON ----------------------------------------------------------------------------------------------
DS_KEYS = {"zero_optimization.stage": 2, "gradient_clipping": 1.0, "bf16.enabled": False, "fp16.enabled": False,
           "fp16.loss_scale": 0.0, "fp16.initial_scale_power": 16, "zero_optimization.reduce_bucket_size": 500000000,
           "zero_optimization.overlap_comm": False, "steps_per_print": 10, "wall_clock_breakdown": False,
           "zero_optimization.offload_optimizer.device": "none", "zero_optimization.contiguous_gradients": True,
           "prescale_gradients": False, "gradient_predivide_factor": 1.0, "zero_optimization": {},
           "bf16": {}, "communication_data_type": "fp32"}
DS_TEXTS = [("invalid JSON", "{\"zero_optimization\": "), ("a list", "[1, 2]"), ("a scalar", "3"), ("empty", ""),
            ("not UTF-8", "\udcff\udcfe{}"), ("NaN literal", "{\"gradient_clipping\": NaN}"),
            ("deep nesting", "[" * 100000 + "]" * 100000), ("BOM", "\ufeff{}"), ("null", "null"),
            ("duplicate keys", "{\"bf16\": {\"enabled\": true}, \"bf16\": 5}")]
DS_OVERRIDES = ["ds.x", "ds.=1", "ds.zero_optimization.stage.x=1", "ds.zero_optimization=3", "ds.bf16.enabled=yes",
                "ds.train_batch_size=16", "ds.fp16.enabled=true ds.bf16.enabled=true", "ds.zero_optimization.stage=7",
                "ds.zero_optimization.stage=[", "ds.optimizer.type=Nope", "ds.gradient_clipping=-1",
                "ds.zero_optimization.stage=3", "ds.ünï=1"]


def ds_case(rng: random.Random, root: Path, fx: dict) -> Case:
    config = _write(root, base_config(fx, root))
    ds = json.loads((ROOT / "ds_configs/zero2.json").read_text())
    op = rng.choice(["set_file", "set_override", "unknown", "text", "override", "path", "batch"])
    ds_path = root / "ds.json"
    overrides: list[str] = []
    if op.startswith("set"):
        key = rng.choice(sorted(DS_KEYS))
        label, value = rng.choice(BAD_VALUES)
        default = DS_KEYS[key]
        bad = must_fail(default, label) if not isinstance(default, dict) else label != "dict"
        if isinstance(default, bool) and label == "zero":  # DeepSpeed's pydantic reads 0 as false
            bad = False
        if key == "gradient_clipping" and label in ("neg", "neg_huge"):
            bad = True
        if key == "zero_optimization.stage" and label in ("neg", "neg_huge", "huge"):
            bad = True
        if op == "set_file":
            _put(ds, key, value)
        else:
            overrides.append(f"ds.{key}={yaml_text(value)}")
        ds_path.write_text(json.dumps(ds))
        return Case("ds", f"{op} {key}={label}", Cli(_main(), _argv(root, config, str(ds_path), overrides)),
                    "error" if bad else "error_or_accept", [key, key.rsplit(".", 1)[-1], str(ds_path)])
    if op == "unknown":
        key = rng.choice(["zero_optimisation", "zero_optimization.stagee", "ünï", "bf16.enable", "x" * 200])
        _put(ds, key, 1)
        ds_path.write_text(json.dumps(ds))
        return Case("ds", f"unknown {key[:30]}", Cli(_main(), _argv(root, config, str(ds_path))), "error_or_accept",
                    [key.rsplit(".", 1)[-1][:30], str(ds_path)])
    if op == "text":
        what, text = rng.choice(DS_TEXTS)
        ds_path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
        names = [str(ds_path)]
        return Case("ds", f"ds file: {what}", Cli(_main(), _argv(root, config, str(ds_path))),
                    "error_or_accept" if what in ("BOM",) else "error", names + ["gradient_clipping", "bf16"])
    if op == "override":
        text = rng.choice(DS_OVERRIDES)
        overrides = text.split(" ")
        ok = text in ("ds.zero_optimization.stage=3", "ds.bf16.enabled=yes",  # YAML 1.1 reads yes as true
                      "ds.ünï=1")  # DeepSpeed ignores keys it does not know (docs/reliability.md: what remains)
        return Case("ds", f"override {text!r}", Cli(_main(), _argv(root, config, None, overrides)),
                    "error_or_accept" if ok else "error",
                    [part for o in overrides for part in (o.split("=", 1)[0][3:] or o,
                                                          o.split("=", 1)[0].rsplit(".", 1)[-1],
                                                          o.split("=", 1)[0][3:].split(".")[0] or o)]
                    + ["bf16", "fp16"])
    if op == "path":
        path = rng.choice([root / "missing.json", root, root / "file.json"])
        if path.name == "file.json":
            path.write_bytes(b"")
        return Case("ds", f"ds path {path.name}", Cli(_main(), _argv(root, config, str(path))), "error", [str(path)])
    key = rng.choice(["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"])
    ds[key] = rng.choice([16, -1, "x"])
    ds_path.write_text(json.dumps(ds))
    return Case("ds", f"sets {key}", Cli(_main(), _argv(root, config, str(ds_path))), "error", [key])


def _main():
    from pretrain.main import main
    return main
