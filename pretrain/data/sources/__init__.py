"""Raw data sources. Each module has `samples(split, *, raw, input, seed, skipped)` yielding `Sample`s.

`raw` is DATA_DIR/raw (what scripts/fetch_data.sh extracted), `input` overrides the source's default location,
`seed` makes templated captions reproducible, and `skipped` (a Counter) receives a reason for each raw item
that yields no sample.
"""
from __future__ import annotations

import random
import re
from typing import Any, NamedTuple

from PIL import Image


class Sample(NamedTuple):
    key: str  # unique, no dots: webdataset splits member names at the first dot
    image: bytes | Image.Image  # encoded file bytes, or a decoded image to be encoded as PNG
    caption: str
    meta: dict[str, Any]


def sanitize_key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def templated_caption(source: str, split: str, index: int, seed: int, templates: list[str], synonyms: list[str]) -> str:
    """A template and a class synonym picked by an RNG seeded from the sample's identity: varied captions
    (a handful of fixed strings makes the contrastive task trivial), yet the same ones on every run."""
    rng = random.Random(f"{source}:{split}:{index}:{seed}")
    return rng.choice(templates).format(rng.choice(synonyms))


def registry():
    from . import fashion_mnist, folder, mnist, openclipart, synthetic

    return {"fashion_mnist": fashion_mnist, "mnist": mnist, "openclipart": openclipart, "folder": folder,
            "synthetic": synthetic}
