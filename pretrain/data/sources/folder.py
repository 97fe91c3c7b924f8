"""Generic image-caption pairs: a CSV or JSONL file with an image path and a caption per row (paths relative to
the file), or a folder where each image has a same-stem .txt caption."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from . import Sample, sanitize_key

IMAGE_COLUMNS = ("image", "filepath", "path", "file")
CAPTION_COLUMNS = ("caption", "text", "title")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def _pick(row: dict, names: tuple[str, ...], where: str) -> str:
    for name in names:
        if name in row:
            return row[name]
    raise ValueError(f"{where}: no column among {names} (columns: {list(row)})")


def _read_caption(txt: Path) -> str | None:
    try:
        return txt.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None


def pairs(input: Path) -> Iterator[tuple[Path, str | None]]:
    """(image path, caption or None when missing/unreadable) in file / sorted folder order."""
    if input.is_dir():
        for image in sorted(p for p in input.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield image, _read_caption(image.with_suffix(".txt"))
    elif input.suffix.lower() == ".csv":
        with open(input, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield input.parent / _pick(row, IMAGE_COLUMNS, str(input)), _pick(row, CAPTION_COLUMNS, str(input))
    elif input.suffix.lower() in (".jsonl", ".json"):
        with open(input, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    yield input.parent / _pick(row, IMAGE_COLUMNS, str(input)), _pick(row, CAPTION_COLUMNS, str(input))
    else:
        raise ValueError(f"{input}: expected a folder, a .csv or a .jsonl file")


def samples(split: str, *, raw: Path, input: str | None, seed: int, skipped: Counter) -> Iterator[Sample]:
    if not input:
        raise ValueError("the folder source needs --input (a folder, .csv or .jsonl)")
    input = Path(input)
    for i, (image, caption) in enumerate(pairs(input)):
        if caption is None or not caption.strip():
            skipped["no_caption"] += 1
            continue
        if not image.is_file():
            skipped["missing_image"] += 1
            continue
        meta = {"source": "folder", "split": split, "path": str(image)}
        yield Sample(f"{i:08d}_{sanitize_key(image.stem)}", image.read_bytes(), caption.strip(), meta)
