"""Shard lists: resolve a spec to tar paths, and write manifests.

A spec is a manifest.json path, a directory holding manifest.json, a brace pattern
(`dir/shard-{000000..000009}.tar`), a plain .tar path, or a list / comma-separated mix of these. A manifest's
"shards" entries are paths relative to the manifest; an entry may itself be a directory or another manifest,
so a mix manifest can stack earlier shard dirs as the data grows stage by stage:

    {"source": "mix", "shards": [{"path": "../fashion_mnist"}, {"path": "../openclipart/manifest.json"}]}
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from braceexpand import braceexpand

MANIFEST = "manifest.json"


def split_spec(spec: str) -> list[str]:
    """Split at commas outside braces: 'a,{b,c}.tar' -> ['a', '{b,c}.tar']."""
    parts, depth, current = [], 0, ""
    for ch in spec:
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _from_manifest(path: Path, seen: set[Path]) -> list[str]:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"manifest cycle through {path}")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    shards: list[str] = []
    for entry in manifest["shards"]:
        shards += _resolve(str(path.parent / entry["path"]), seen | {path})
    return shards


def _resolve(item: str, seen: set[Path]) -> list[str]:
    path = Path(item)
    if "{" in item:
        return [p for expanded in braceexpand(item) for p in _resolve(expanded, seen)]
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path / MANIFEST} not found (directory given in shard spec)")
        return _from_manifest(path / MANIFEST, seen)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (shard spec)")
    if path.suffix == ".json":
        return _from_manifest(path, seen)
    return [os.path.normpath(item)]


def load_shards(spec: str | os.PathLike | list) -> list[str]:
    """Tar shard paths in spec order. Raises FileNotFoundError naming the first missing path."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    shards: list[str] = []
    for item in items:
        for part in split_spec(str(item)):
            shards += _resolve(part, set())
    if not shards:
        raise ValueError(f"shard spec {spec!r} names no shards")
    return shards


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Write directory/manifest.json atomically."""
    path = Path(directory) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
