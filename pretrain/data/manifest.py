"""Shard lists: resolve a spec to tar paths (with sample counts), data stages, and write manifests.

A spec is a manifest.json path, a directory holding manifest.json, a brace pattern
(`dir/shard-{000000..000009}.tar`), a plain .tar path, or a list / comma-separated mix of these. A manifest's
"shards" entries are paths relative to the manifest; an entry may itself be a directory or another manifest,
so a mix manifest can stack earlier shard dirs as the data grows stage by stage:

    {"source": "mix", "shards": [{"path": "../fashion_mnist"}, {"path": "../openclipart/manifest.json"}]}

Sample counts (`load_shards_with_counts`, `count_samples`) come from the manifests' per-shard "samples". A tar
reached without one (a bare .tar, a brace pattern, a manifest entry without "samples") takes its count from
the manifest.json next to it if that lists it with "samples", else from one scan of its tar headers (data is
seeked over): the number of webdataset samples, i.e. runs of members with the same key. A damaged tar counts
the samples before the damage, with a warning. `shard_sample_counts(paths)` does the latter two for tar paths
(the loader's list, no spec parsing).

Data stages D1 ⊆ D2 ⊆ ... (`load_stages`): each stage is a spec; every stage must name at least one shard
and keep every shard of the stage before (same normalised real path, counted with multiplicity), else
`StageError` names the stage and the first dropped shard.

Remote shards: a spec may also be what webdataset's `gopen` reads (`is_remote`): `pipe:CMD` (a shell command
writing the tar to stdout), `http://...`, `https://...` and gopen's other URL schemes. These are shards, passed
through unresolved (brace patterns are expanded; a comma outside braces still separates specs, so a pipe command
with one must come as a list item of its own). `file:PATH` is a local path and resolved as one. A manifest entry
may be a URL (not `pipe:`: a manifest never runs a command); its "samples" is remembered for that URL in this
process, so counting the list `load_shards` returned finds it. Without a count, a remote shard's samples are
counted by reading its whole stream once (a download per shard and process; cached once complete), so give
"samples" in a manifest for large remote data.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from braceexpand import braceexpand
from webdataset.gopen import gopen_schemes
from webdataset.tariterators import base_plus_ext

MANIFEST = "manifest.json"
REMOTE_SCHEMES = frozenset(s for s in gopen_schemes if s != "__default__") | {"pipe", "http", "https"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

log = logging.getLogger(__name__)
_remote_counts: dict[str, int] = {}  # samples of remote shards, from manifests or one full read


def scheme(spec: str | os.PathLike) -> str | None:
    """The lower-case URL scheme of a spec ("pipe", "http", "file", ...), None for a plain path."""
    match = _SCHEME.match(str(spec))
    return match.group(1).lower() if match else None


def is_remote(spec: str | os.PathLike) -> bool:
    """A spec read through a stream rather than a local file: `pipe:CMD`, `http(s)://`, gopen's other schemes."""
    return scheme(spec) in REMOTE_SCHEMES


def local_path(spec: str | os.PathLike) -> str:
    """The local path of a `file:` spec (as webdataset's gopen opens it), other specs unchanged."""
    return url2pathname(urlparse(str(spec)).path) if scheme(spec) == "file" else str(spec)


class StageError(ValueError):
    """A data stage that is empty or drops shards of the stage before it."""


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


def _read_manifest(path: Path) -> list[dict]:
    """The "shards" entries of a manifest, checked: ValueError naming the file for one that is not a readable JSON
    object with a list of {"path": str, "samples": integer >= 0 (optional)} entries."""
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested too deep
        raise ValueError(f"{path}: not a JSON manifest ({e.__class__.__name__}: {str(e)[:200]})") from None
    entries = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: a manifest is a JSON object with a \"shards\" list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"].strip():
            raise ValueError(f"{path}: shards[{i}] must be an object with a non-empty \"path\" string, got "
                             f"{entry!r:.80}")
        samples = entry.get("samples", 0)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise ValueError(f"{path}: shards[{i}].samples must be an integer >= 0, got {samples!r:.80}")
    return entries


def _from_manifest(path: Path, seen: set[Path]) -> list[tuple[str, int | None]]:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"manifest cycle through {path}")
    shards: list[tuple[str, int | None]] = []
    for entry in _read_manifest(path):
        if is_remote(entry["path"]):
            remote = _resolve(entry["path"], seen)
            if any(scheme(spec) == "pipe" for spec, _ in remote):
                raise ValueError(f"{path}: a manifest entry may not be a pipe: command ({entry['path']!r}); "
                                 f"give it in the shard spec instead")
            if "samples" in entry and len(remote) == 1:
                _remote_counts[remote[0][0]] = int(entry["samples"])
                remote = [(remote[0][0], int(entry["samples"]))]
            shards += remote
            continue
        item = str(path.parent / local_path(entry["path"]))
        resolved = _resolve(item, seen | {path})
        if "samples" in entry and len(resolved) == 1 and resolved[0][0] == os.path.normpath(item):  # a tar entry
            resolved = [(resolved[0][0], int(entry["samples"]))]
        shards += resolved
    return shards


def _resolve(item: str, seen: set[Path]) -> list[tuple[str, int | None]]:
    """(tar path, samples or None when no manifest gave the count) in spec order."""
    item = local_path(item)
    if "{" in item:
        return [p for expanded in braceexpand(item) for p in _resolve(expanded, seen)]
    if is_remote(item):
        if scheme(item) != "pipe" and urlparse(item).path.endswith(".json"):
            raise ValueError(f"{item}: remote manifests are not supported (download it, or list its shards)")
        return [(item, _remote_counts.get(item))]
    path = Path(item)
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path / MANIFEST} not found (directory given in shard spec)")
        return _from_manifest(path / MANIFEST, seen)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (shard spec)")
    if path.suffix == ".json":
        return _from_manifest(path, seen)
    return [(os.path.normpath(item), None)]


def _resolve_spec(spec: str | os.PathLike | list) -> list[tuple[str, int | None]]:
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    shards: list[tuple[str, int | None]] = []
    for item in items:
        whole = not isinstance(spec, (str, os.PathLike)) and scheme(item) == "pipe"  # a list item: no comma split
        for part in [str(item).strip()] if whole else split_spec(str(item)):
            shards += _resolve(part, set())
    if not shards:
        raise ValueError(f"shard spec {spec!r} names no shards")
    return shards


def load_shards(spec: str | os.PathLike | list) -> list[str]:
    """Tar shard paths in spec order. Raises FileNotFoundError naming the first missing path."""
    return [path for path, _ in _resolve_spec(spec)]


def _sibling_count(path: str, cache: dict[str, dict[str, int]]) -> int | None:
    """The "samples" of `path` in the manifest.json of its own directory, if that lists it (a remote shard: the
    count a manifest gave for it in this process)."""
    if is_remote(path):
        return _remote_counts.get(path)
    path = local_path(path)
    directory = os.path.dirname(os.path.realpath(path))
    if directory not in cache:
        counts: dict[str, int] = {}
        try:
            with open(os.path.join(directory, MANIFEST), encoding="utf-8") as f:
                entries = json.load(f).get("shards", [])
            for entry in entries:
                if isinstance(entry, dict) and "samples" in entry and "path" in entry:
                    counts[os.path.realpath(os.path.join(directory, entry["path"]))] = int(entry["samples"])
        except (OSError, ValueError, AttributeError, TypeError, RecursionError):  # no manifest, or not one of ours
            pass
        cache[directory] = counts
    return cache[directory].get(os.path.realpath(path))


def count_tar_samples(path: str) -> int:
    """Webdataset samples in one tar, from its headers only (member data is seeked over): runs of regular
    files with the same key, as `webdataset.tariterators.group_by_keys` groups them. A damaged tar counts the
    samples before the damage and logs a warning."""
    count, key = 0, None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                prefix, _ = base_plus_ext(info.name)
                if prefix is not None and prefix != key:
                    count, key = count + 1, prefix
    except (tarfile.TarError, OSError) as exn:
        log.warning("counting samples of %s: stopped at damage after %d samples: %s", path, count, exn)
    return count


def count_remote_samples(spec: str) -> int:
    """Samples of a remote shard, by reading its whole stream once (with the loader's retries). The count is
    cached for the process when the read was complete; an unreadable shard counts what was read, with a
    warning."""
    from .pipeline import read_shard  # the loader's reader (pipeline imports this module)

    count, failed = 0, None
    for item in read_shard(spec):
        if isinstance(item, str):
            failed = item
        else:
            count += 1
    if failed is None:
        _remote_counts[spec] = count
    else:
        log.warning("counting samples of %s: %s after %d samples", spec, failed, count)
    return count


def _count(path: str) -> int:
    return count_remote_samples(path) if is_remote(path) else count_tar_samples(local_path(path))


def load_shards_with_counts(spec: str | os.PathLike | list) -> list[tuple[str, int]]:
    """(tar path, samples) in spec order: the path as `load_shards` gives it, the count from the manifest that
    named the shard, else from the manifest.json beside the tar, else from scanning the tar's headers."""
    cache: dict[str, dict[str, int]] = {}
    out = []
    for path, samples in _resolve_spec(spec):
        if samples is None:
            samples = _sibling_count(path, cache)
        out.append((path, _count(path) if samples is None else samples))
    return out


def shard_sample_counts(paths: list[str]) -> list[int]:
    """Samples of each tar path, taken as a path (no spec parsing: a comma or brace in a name is literal): the
    "samples" of the manifest.json beside it if that lists it, else one scan of its headers."""
    cache: dict[str, dict[str, int]] = {}
    counts = []
    for path in paths:
        samples = _sibling_count(path, cache)
        counts.append(_count(path) if samples is None else samples)
    return counts


def count_samples(spec: str | os.PathLike | list) -> int:
    """|D| in samples for a spec (or a list of tar paths, e.g. what `load_shards` returned)."""
    return sum(samples for _, samples in load_shards_with_counts(spec))


def shard_identity(path: str | os.PathLike) -> str:
    """What makes two shard paths the same shard: the normalised real path (a remote spec: itself)."""
    if is_remote(path):
        return str(path)
    return os.path.normpath(os.path.realpath(local_path(path)))


def first_missing(old: list[str], new: list[str]) -> str | None:
    """The first shard of `old` that `new` lacks (by `shard_identity`, with multiplicity), or None."""
    available = Counter(shard_identity(p) for p in new)
    for path in old:
        ident = shard_identity(path)
        if available[ident] == 0:
            return path
        available[ident] -= 1
    return None


def load_stages(specs: list) -> list[list[str]]:
    """Resolve data stages D1 ⊆ D2 ⊆ ... (each a spec for `load_shards`) to their shard lists. Raises StageError
    naming the stage (1-based index and spec) if one names no shards or drops a shard of the stage before it
    (the first dropped shard's path); a missing file raises FileNotFoundError as in `load_shards`."""
    stages: list[list[str]] = []
    for index, spec in enumerate(specs, 1):
        try:
            shards = load_shards(spec)
        except ValueError as exn:  # names no shards, manifest cycle, bad JSON
            raise StageError(f"data stage {index} ({spec!r}): {exn}") from exn
        if stages:
            missing = first_missing(stages[-1], shards)
            if missing is not None:
                raise StageError(f"data stage {index} ({spec!r}) drops shard {missing} of stage {index - 1}; "
                                 f"each stage must contain the one before")
        stages.append(shards)
    return stages


def write_manifest(directory: Path, manifest: dict) -> Path:
    """Write directory/manifest.json atomically."""
    path = Path(directory) / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
