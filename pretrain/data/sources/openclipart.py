"""OpenClipArt (Debian `openclipart-png` + `openclipart-svg`): real, noisy captions from SVG RDF metadata.

Each PNG (symlinked duplicates once) is paired with the SVG of the same relative path; the caption is
"{title}, {keyword}, ..." from the cc:Work's dc:title and dc:subject keywords (generic ones such as "hash"
dropped). Items with neither are skipped ("no_caption"). The held-out split is a fixed hash of the key, so it
never changes when files are added or the shard size changes.
"""
from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Iterator

from . import Sample, sanitize_key

SUBDIR = Path("openclipart/usr/share/openclipart")
HELDOUT_PER_10000 = 500
SPLIT_RULE = f"heldout iff int(blake2b(key, digest_size=8)) % 10000 < {HELDOUT_PER_10000} (5%), else train"
SPLITS = ("train", "heldout", "all")
MAX_KEYWORDS = 5
NOISE_KEYWORDS = {"hash", "unsorted", "png", "svg", "clip art", "clipart", "openclipart", "public domain"}
NS = {"dc": "http://purl.org/dc/elements/1.1/", "cc": "http://web.resource.org/cc/",
      "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}


def split_of(key: str) -> str:
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
    return "heldout" if h % 10000 < HELDOUT_PER_10000 else "train"


def svg_metadata(path: Path) -> tuple[str, list[str]]:
    """(title, keywords) of the SVG's cc:Work; parsing stops at the end of <metadata>."""
    metadata = None
    for _, element in ET.iterparse(path, events=("end",)):
        if element.tag.endswith("}metadata"):
            metadata = element
            break
    work = metadata.find(".//cc:Work", NS) if metadata is not None else None
    if work is None:
        return "", []
    title = " ".join((work.findtext("dc:title", "", NS) or "").replace("_", " ").split())
    keywords = [" ".join(li.text.replace("_", " ").split()) for li in work.findall("dc:subject/rdf:Bag/rdf:li", NS)
                if li.text and li.text.strip()]
    return title, keywords


def make_caption(title: str, keywords: list[str]) -> str:
    kept: list[str] = []
    for k in keywords:
        if k.lower() not in NOISE_KEYWORDS and k.lower() != title.lower() and k.lower() not in map(str.lower, kept):
            kept.append(k)
    return ", ".join(([title] if title else []) + kept[:MAX_KEYWORDS])


def samples(split: str, *, raw: Path, input: str | None, seed: int, skipped: Counter) -> Iterator[Sample]:
    if split not in SPLITS:
        raise ValueError(f"openclipart split must be one of {list(SPLITS)}, got {split!r}")
    root = Path(input) if input else Path(raw) / SUBDIR
    if not (root / "png").is_dir():
        raise FileNotFoundError(f"{root / 'png'} not found; run scripts/fetch_data.sh DATA_DIR openclipart")
    seen: set[Path] = set()
    for png in sorted((root / "png").rglob("*.png"), key=lambda p: (p.is_symlink(), p)):
        if png.resolve() in seen:  # the package symlinks some images into several folders
            skipped["duplicate"] += 1
            continue
        seen.add(png.resolve())
        rel = png.relative_to(root / "png")
        key = "openclipart_" + sanitize_key(str(rel.with_suffix("")))
        if split != "all" and split_of(key) != split:
            continue
        svg = (root / "svg" / rel).with_suffix(".svg")
        try:
            title, keywords = svg_metadata(svg)
        except FileNotFoundError:
            skipped["missing_svg"] += 1
            continue
        except ET.ParseError:
            skipped["bad_svg"] += 1
            continue
        caption = make_caption(title, keywords)
        if not caption:
            skipped["no_caption"] += 1
            continue
        meta = {"source": "openclipart", "split": split_of(key), "path": str(rel), "title": title, "keywords": keywords}
        yield Sample(key, png.read_bytes(), caption, meta)
