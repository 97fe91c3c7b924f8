"""Task names -> data builders. Built-in names, plus two generic forms for the user's own data:

    classification:PATH   a folder of class folders, or a JSONL of {"image", "label"} (with --classnames)
    retrieval:PATH        a JSONL of {"image", "captions"}, or webdataset shards (manifest, folder, pattern)

Kinds are CLIP_benchmark's task names. A task list is comma-separated; commas inside braces stay in the spec.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from pretrain.data.manifest import split_spec

from . import builtin
from .data import EvalDataError, captioned_images, labelled_images, read_list, read_templates

ZEROSHOT, RETRIEVAL, LINEAR_PROBE = "zeroshot_classification", "zeroshot_retrieval", "linear_probe"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    build: Callable[[Path], object]  # data_dir -> Classification | Retrieval | LinearProbe


BUILTIN = {
    "fashion_mnist": (ZEROSHOT, lambda data_dir: builtin.fashion_mnist()),
    "mnist": (ZEROSHOT, builtin.mnist),
    "cifar10_foolbox": (ZEROSHOT, partial(builtin.foolbox, "cifar10")),
    "cifar100_foolbox": (ZEROSHOT, partial(builtin.foolbox, "cifar100")),
    "imagenet_foolbox": (ZEROSHOT, partial(builtin.foolbox, "imagenet")),
    "openclipart_retrieval": (RETRIEVAL, builtin.openclipart_heldout),
    "synthetic_shapes": (ZEROSHOT, builtin.synthetic_shapes),
    "fashion_mnist_linear_probe": (LINEAR_PROBE, partial(builtin.linear_probe, "fashion_mnist")),
    "mnist_linear_probe": (LINEAR_PROBE, partial(builtin.linear_probe, "mnist")),
}
GENERIC = "classification:PATH, retrieval:PATH"


def parse(spec: str | list[str], classnames: str | None = None, templates: str | None = None) -> list[Task]:
    """Tasks of a comma-separated list; unknown names raise EvalDataError before anything is loaded.
    classnames/templates: files for the generic classification tasks (templates default to CLIP_benchmark's
    fallback, its ImageNet set)."""
    names = split_spec(spec) if isinstance(spec, str) else list(spec)
    if not names:
        raise EvalDataError("no tasks given")
    unknown = [n for n in names if n not in BUILTIN and not n.startswith(("classification:", "retrieval:"))]
    if unknown:
        raise EvalDataError(f"unknown task(s) {unknown}; built-in: {', '.join(BUILTIN)}; generic: {GENERIC}")
    empty = [n for n in names if n.endswith(":") and n.startswith(("classification:", "retrieval:"))]
    if empty:
        raise EvalDataError(f"task {empty[0]!r} names no data: write {empty[0]}PATH")
    tasks = []
    for name in names:
        if name in BUILTIN:
            tasks.append(Task(name, *BUILTIN[name]))
        elif name.startswith("classification:"):
            tasks.append(Task(name, ZEROSHOT, partial(_labelled, name.split(":", 1)[1], classnames, templates)))
        else:
            tasks.append(Task(name, RETRIEVAL, partial(_captioned, name.split(":", 1)[1])))
    return tasks


def _labelled(path: str, classnames: str | None, templates: str | None, data_dir: Path):
    names = read_list(classnames, "class-name") if classnames else None
    if templates:
        prompts = read_templates(templates)
    else:
        prompts = builtin.clip_benchmark_json("en_zeroshot_classification_templates.json")["imagenet1k"]
    return labelled_images(path, names, prompts)


def _captioned(spec: str, data_dir: Path):
    return captioned_images(spec)
