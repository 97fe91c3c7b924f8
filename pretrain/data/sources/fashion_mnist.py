"""Fashion-MNIST (Debian `dataset-fashion-mnist`): IDX reader, class names, templated training captions.

`load_split` and `CLASSNAMES` are shared with the zero-shot eval; the caption templates are for training pairs.
"""
from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from . import Sample, templated_caption

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {"train": "train", "test": "t10k"}

CLASSNAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

SYNONYMS = [
    ["t-shirt", "tee", "top", "t-shirt or top", "short-sleeved top", "tee shirt"],
    ["trousers", "pair of trousers", "pants", "pair of pants", "slacks", "trouser"],
    ["pullover", "sweater", "jumper", "knitted sweater", "pullover sweater"],
    ["dress", "frock", "gown", "summer dress", "woman's dress"],
    ["coat", "jacket", "overcoat", "winter coat", "outer coat"],
    ["sandal", "pair of sandals", "open-toed shoe", "summer sandal", "flip-flop"],
    ["shirt", "button-up shirt", "blouse", "long-sleeved shirt", "collared shirt"],
    ["sneaker", "trainer", "running shoe", "sports shoe", "athletic shoe"],
    ["bag", "handbag", "purse", "tote bag", "shoulder bag"],
    ["ankle boot", "boot", "short boot", "bootie", "leather ankle boot"],
]

TEMPLATES = [
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.", "a small photo of a {}.",
    "a low resolution photo of a {}.", "a grayscale photo of a {}.", "a black and white photo of a {}.",
    "a blurry photo of a {}.", "a pixelated photo of a {}.", "a tiny image of a {}.", "a 28x28 image of a {}.",
    "a product photo of a {}.", "a catalog image of a {}.", "a centered photo of a {}.", "a dark photo of a {}.",
    "a bright photo of a {}.", "a close-up photo of a {}.", "a cropped photo of a {}.", "a thumbnail of a {}.",
    "{}", "a {}.", "the {}.", "a {} on a black background.", "a {} seen from the front.",
    "a {} for sale.", "a {} in an online shop.", "clothing item: {}.", "fashion item: {}.", "this is a {}.",
    "there is a {} in this picture.", "a simple picture of a {}.", "a small grey {}.", "a scan of a {}.",
    "a {}, photographed flat.", "an item of clothing, a {}.", "a shop photo showing a {}.", "one {}.",
    "a grainy picture of a {}.", "a monochrome image of a {}.", "a low-res shot of a {}.", "a photo showing a {}.",
    "an example of a {}.", "a {} in grayscale.", "my {}.", "a worn {}.", "a new {}.", "a plain {}.",
]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte; low byte = number of dimensions
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str, root: str | Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int64 labels [N] of 'train' (60k) or 'test' (10k)."""
    if split not in SPLITS:
        raise ValueError(f"fashion_mnist split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(root)
    images = _read_idx(root / f"{SPLITS[split]}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{SPLITS[split]}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def samples(split: str, *, raw: Path, input: str | None, seed: int, skipped: Counter) -> Iterator[Sample]:
    images, labels = load_split(split, input or DEFAULT_ROOT)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        caption = templated_caption("fashion_mnist", split, i, seed, TEMPLATES, SYNONYMS[label])
        meta = {"source": "fashion_mnist", "split": split, "index": i, "label": int(label),
                "classname": CLASSNAMES[label]}
        yield Sample(f"fashion_mnist_{split}_{i:06d}", Image.fromarray(image), caption, meta)
