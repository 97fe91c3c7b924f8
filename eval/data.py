"""Evaluation data sets and the generic readers (labelled image folder, JSONL, webdataset shards).

A data set holds undecoded images (uint8 arrays, encoded bytes or file paths), so each rank decodes only its
own share. Images that cannot be decoded are counted by reason when they are embedded (see features.py),
never fatal; input the user must fix (an unknown task, class names that do not fit the labels, a data set
with nothing in it) raises EvalDataError with the file named.
"""
from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.data.manifest import load_shards
from pretrain.data.pipeline import IMAGE_EXTS, read_shard

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
MAX_PIXELS = 50_000_000  # as the training loader: larger images (some OpenClipArt) are skipped, not decoded


class EvalDataError(ValueError):
    """Input the user must fix; the message names the task or file."""


class TaskUnavailable(EvalDataError):
    """The task's data has not been fetched: the task is skipped, with the command that fetches it."""


class TooLarge(ValueError):
    pass


@dataclass
class Classification:
    name: str
    images: list  # np.ndarray (uint8) | bytes | Path
    labels: list[int]
    classnames: list[str]
    templates: list[str]
    skipped: Counter = field(default_factory=Counter)  # items dropped while reading (decode failures come later)
    info: dict = field(default_factory=dict)  # recorded in the result (split, source, ...)
    # more prompt sets scored on the same image embeddings, each under its own metric keys: {"transfer": [...]}
    # gives transfer_acc1, transfer_acc5, transfer_mean_per_class_recall
    prompt_sets: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Retrieval:
    name: str
    images: list
    captions: list[list[str]]  # several captions per image
    skipped: Counter = field(default_factory=Counter)
    info: dict = field(default_factory=dict)


@dataclass
class LinearProbe:
    name: str
    train: Classification  # its validation split for the regularisation sweep is drawn from here
    test: Classification


def open_image(item, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A decoded image; the header is checked against max_pixels before any pixel is decoded."""
    if isinstance(item, np.ndarray):
        return Image.fromarray(item)
    image = Image.open(io.BytesIO(item) if isinstance(item, bytes) else item)
    if image.width * image.height > max_pixels:
        raise TooLarge(f"{image.width}x{image.height}")
    image.load()
    return image


def first(data: Classification | Retrieval, limit: int) -> None:
    """Keep the first `limit` samples (limit 0: all)."""
    if limit and isinstance(data, Classification):
        data.images, data.labels = data.images[:limit], data.labels[:limit]
    elif limit:
        data.images, data.captions = data.images[:limit], data.captions[:limit]


def check_nonempty(data, source: str) -> None:
    if not data.images:
        raise EvalDataError(f"task {data.name}: no samples in {source} (skipped while reading: {dict(data.skipped)})")


# ---- user-supplied class names and templates -------------------------------------------------------------
def read_list(path: str | Path, what: str) -> list[str]:
    """A JSON list of strings, or one entry per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{what} file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        items = json.loads(text) if path.suffix == ".json" else None
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON
        raise EvalDataError(f"{what} file {path}: cannot read it ({e.__class__.__name__}: {str(e)[:160]})") from None
    if path.suffix == ".json":
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise EvalDataError(f"{path}: expected a JSON list of strings")
    else:
        items = [line.strip() for line in text.splitlines() if line.strip()]
    if not items:
        raise EvalDataError(f"{what} file {path} is empty")
    return items


def read_templates(path: str | Path) -> list[str]:
    templates = read_list(path, "templates")
    for t in templates:  # filled with str.format(c=name): any other field, or a stray brace, fails there
        try:
            filled = t.format(c="\0class\0")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise EvalDataError(f"{path}: template {t[:80]!r} cannot be filled with str.format(c=...) "
                                f"({e.__class__.__name__}: {e}); write {{c}} for the class name and {{{{ }}}} "
                                f"for a literal brace") from None
        if "\0class\0" not in filled:
            raise EvalDataError(f"{path}: every template needs '{{c}}' for the class name; {t[:80]!r} has none")
    return templates


def check_labels(labels: list[int], classnames: list[str], source: str) -> None:
    """Every label must index a class name: a class-name file that does not fit the data is an error."""
    bad = sorted({y for y in labels if not 0 <= y < len(classnames)})
    if bad:
        raise EvalDataError(f"{source}: labels {bad[:5]} have no class name: the class-name list has "
                            f"{len(classnames)} names (labels 0..{len(classnames) - 1})")


# ---- generic readers -----------------------------------------------------------------------------------
def _jsonl(path: Path):
    """(line number, row dict) of a JSONL file; a malformed line is an error that names it."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if any("\udc80" <= ch <= "\udcff" for ch in line):
                raise EvalDataError(f"{path}:{n}: not UTF-8")
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalDataError(f"{path}:{n}: not JSON ({e})") from e
                if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not row["image"]:
                    raise EvalDataError(f"{path}:{n}: expected an object with an 'image' path (a string)")
                yield n, row


def labelled_images(path: str | Path, classnames: list[str] | None, templates: list[str]) -> Classification:
    """A labelled image folder (one sub-folder per class, classes in sorted folder order, names from the
    folders unless a class-name list is given) or a JSONL file of {"image": path, "label": int}."""
    path = Path(path)
    images, labels, skipped = [], [], Counter()
    if path.is_dir():
        folders = sorted(d for d in path.iterdir() if d.is_dir())
        if classnames is not None and len(classnames) != len(folders):
            raise EvalDataError(f"{path}: {len(folders)} class folders but the class-name list has "
                                f"{len(classnames)} names")
        classnames = classnames or [d.name.replace("_", " ") for d in folders]
        for label, folder in enumerate(folders):
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            images += files
            labels += [label] * len(files)
    elif path.is_file() and path.suffix == ".jsonl":
        if classnames is None:
            raise EvalDataError(f"{path}: a JSONL classification task needs --classnames FILE")
        for n, row in _jsonl(path):
            if not isinstance(row.get("label"), int) or isinstance(row["label"], bool):
                raise EvalDataError(f"{path}:{n}: 'label' must be an integer class index")
            image = path.parent / row["image"]
            if not image.is_file():
                skipped["missing_image"] += 1
                continue
            images.append(image)
            labels.append(row["label"])
    else:
        raise EvalDataError(f"{path}: expected a folder of class folders or a .jsonl file")
    check_labels(labels, classnames, str(path))
    data = Classification(f"classification:{path}", images, labels, classnames, templates, skipped,
                          {"source": str(path)})
    check_nonempty(data, str(path))
    return data


def _captions(value) -> list[str]:
    captions = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [c.strip() for c in captions if isinstance(c, str) and c.strip()]


def captioned_images(spec: str) -> Retrieval:
    """Image-text pairs with one or more captions per image: a JSONL file of {"image": path, "captions":
    [...]} (or "caption": str), or a webdataset shard spec (manifest, folder, brace pattern) whose samples
    hold an image and a .txt with one caption per line, as CLIP_benchmark's webdatasets do."""
    images, captions, skipped = [], [], Counter()
    if spec.endswith(".jsonl"):
        path = Path(spec)
        if not path.is_file():
            raise EvalDataError(f"{path}: no such file")
        for _, row in _jsonl(path):
            caps, image = _captions(row.get("captions", row.get("caption"))), path.parent / row["image"]
            if not caps:
                skipped["no_caption"] += 1
            elif not image.is_file():
                skipped["missing_image"] += 1
            else:
                images.append(image)
                captions.append(caps)
    else:
        try:
            shards = load_shards(spec)
        except (FileNotFoundError, ValueError) as e:
            raise EvalDataError(f"retrieval data {spec}: {e}") from e
        for shard in shards:
            for sample in read_shard(shard):
                if isinstance(sample, str):  # a damaged tar: what came before the damage is kept
                    skipped[sample] += 1
                    continue
                ext = next((e for e in IMAGE_EXTS if e in sample), None)
                try:
                    caps = _captions(sample["txt"].decode("utf-8").splitlines()) if "txt" in sample else []
                except UnicodeDecodeError:
                    caps = []
                if ext is None:
                    skipped["missing_image"] += 1
                elif not caps:
                    skipped["no_caption"] += 1
                else:
                    images.append(sample[ext])
                    captions.append(caps)
    data = Retrieval(f"retrieval:{spec}", images, captions, skipped, {"source": spec})
    check_nonempty(data, spec)
    return data
