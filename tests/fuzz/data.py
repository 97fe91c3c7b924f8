"""Kinds `manifest` (manifests, shard specs and stage lists, through `pretrain.main` up to DeepSpeed) and `shard`
(shard tars, read by a TrainLoader in-process: bad data must become counted skips)."""
from __future__ import annotations

import gzip
import io
import json
import math
import random
import shutil
import struct
import tarfile
import zlib
from pathlib import Path

from .configs import _argv, _main, _write, base_config
from .harness import Case, Cli, Loader

TARS = ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def copy_shards(fx: dict, root: Path) -> Path:
    data = root / "data"
    shutil.copytree(fx["shards"], data)
    return data


# ---- manifests -------------------------------------------------------------------------------------------------
BAD_COUNTS = [-5, "abc", 1e30, math.nan, None, 40.5, True, [40], 10 ** 30, 0, 7]


def manifest_case(rng: random.Random, root: Path, fx: dict) -> Case:
    data = copy_shards(fx, root)
    path = data / "manifest.json"
    manifest = json.loads(path.read_text())
    cfg = base_config(fx, root)
    cfg["data"]["shards"] = str(data)
    op = rng.choice(["count", "count", "structure", "entry_path", "entry_path", "text", "cycle", "stages", "spec"])
    expect, names, what = "error", [str(path), "manifest.json"], op
    if op == "count":
        value = rng.choice(BAD_COUNTS)
        manifest["shards"][rng.randrange(3)]["samples"] = value
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        expect, what = ("error_or_accept" if ok else "error"), f"samples={value!r}"
        path.write_text(json.dumps(manifest))
    elif op == "structure":
        choice = rng.choice(["no shards", "shards dict", "shards str", "entry int", "entry no path", "path int",
                             "empty list", "shards null", "path null", "entry list"])
        what = f"structure: {choice}"
        entry = manifest["shards"][0]
        if choice == "no shards":
            del manifest["shards"]
        elif choice == "shards dict":
            manifest["shards"] = {"path": "shard-000000.tar"}
        elif choice == "shards str":
            manifest["shards"] = "shard-000000.tar"
        elif choice == "shards null":
            manifest["shards"] = None
        elif choice == "entry int":
            manifest["shards"][0] = 3
        elif choice == "entry list":
            manifest["shards"][0] = ["shard-000000.tar"]
        elif choice == "entry no path":
            del entry["path"]
        elif choice == "path int":
            entry["path"] = 5
        elif choice == "path null":
            entry["path"] = None
        else:
            manifest["shards"] = []
        path.write_text(json.dumps(manifest))
    elif op == "entry_path":
        (root / "note.txt").write_text("not a tar")
        target = rng.choice(["missing.tar", "../note.txt", "../../../../../../nonexistent.tar", "/nonexistent.tar",
                             "../data/shard-000001.tar", "http://127.0.0.1:9/x.tar", "pipe:cat shard-000000.tar",
                             "https://127.0.0.1:9/m.json", "ünï 🙂.tar", "", ".", "..", "file:shard-000000.tar",
                             "shard-{000000..000002}.tar", "shard-{000000..000009}.tar", "a\x00b.tar",
                             "x" * 300 + ".tar"])
        manifest["shards"][rng.randrange(3)]["path"] = target
        path.write_text(json.dumps(manifest))
        ok = target in ("../note.txt", "../data/shard-000001.tar", "http://127.0.0.1:9/x.tar",
                        "shard-{000000..000002}.tar", "file:shard-000000.tar")
        expect, what = ("error_or_accept" if ok else "error"), f"entry path {target[:40]!r}"
        names += [target[:40]]
    elif op == "text":
        what, text = rng.choice([("invalid JSON", b"{\"shards\": ["), ("a list", b"[]"), ("empty", b""),
                                 ("not UTF-8", b"\xff\xfe{}"), ("null", b"null"), ("a string", b"\"x\""),
                                 ("deep nesting", b"[" * 100000 + b"]" * 100000), ("NaN", b"NaN")])
        path.write_bytes(text)
        what = f"manifest file: {what}"
    elif op == "cycle":
        shape = rng.choice(["self", "pair", "folder", "chain"])
        what = f"cycle: {shape}"
        other = root / "other"
        other.mkdir()
        if shape == "self":
            manifest["shards"].append({"path": "manifest.json"})
        elif shape == "pair":
            manifest["shards"].append({"path": "../other/manifest.json"})
            (other / "manifest.json").write_text(json.dumps({"shards": [{"path": "../data/manifest.json"}]}))
        elif shape == "folder":
            manifest["shards"].append({"path": "."})
        else:
            for i in range(30):
                (root / f"m{i}.json").write_text(json.dumps({"shards": [{"path": f"m{(i + 1) % 30}.json"}]}))
            cfg["data"]["shards"] = str(root / "m0.json")
        path.write_text(json.dumps(manifest))
        names.append("cycle")
    elif op == "stages":
        shape = rng.choice(["drops", "missing", "same", "empty", "cycle", "grows"])
        what = f"stages: {shape}"
        small = root / "small.json"
        small.write_text(json.dumps({"shards": [{"path": "data/shard-000000.tar", "samples": 40}]}))
        stage2 = {"drops": str(root / "data/shard-000001.tar"), "missing": str(root / "missing.json"),
                  "same": str(small), "empty": " ", "cycle": str(root / "c.json"), "grows": str(data)}[shape]
        (root / "c.json").write_text(json.dumps({"shards": [{"path": "c.json"}]}))
        del cfg["data"]["shards"]
        cfg["data"].update(stages=[str(small), stage2], stage_steps=[2])
        expect = "error_or_accept" if shape in ("same", "grows") else "error"
        names += ["data.stages", stage2]
    else:
        spec = rng.choice(["DATA/shard-{000000..000009}.tar", "DATA/shard-{000000..000002.tar",
                           "DATA/shard-000000.tar,,DATA/shard-000001.tar", ",", "DATA/", "file:DATA",
                           "DATA/shard-000000.tar,http://127.0.0.1:9/{a,b}.tar", "pipe:false",
                           "DATA/manifest.json,DATA/manifest.json", "DATA/shard-000000.tar}"])
        cfg["data"]["shards"] = spec.replace("DATA", str(data))
        ok = spec not in ("DATA/shard-{000000..000009}.tar", "DATA/shard-{000000..000002.tar", ",",
                          "DATA/shard-000000.tar}")
        expect, what, names = ("error_or_accept" if ok else "error"), f"spec {spec!r}", ["data.shards"]
    argv = _argv(root, _write(root, cfg), overrides=["data.read_attempts=1"])
    return Case("manifest", what, Cli(_main(), argv), expect, names + ["data.shards", "data.stages"])


# ---- shard tars --------------------------------------------------------------------------------------------------
def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its data is one tiny row (not decodable at that size)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b"")


def _rewrite(tar_path: Path, edit) -> None:
    """Rebuild a tar with edit(list of (TarInfo, bytes)) -> the new list."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else b"") for m in tar.getmembers()]
    members = edit(members)
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, body in members:
            info = tarfile.TarInfo(info.name) if not isinstance(info, tarfile.TarInfo) else info
            if info.isfile():
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            else:
                tar.addfile(info)


def _set_ext(members, rng, ext: str, body: bytes | None, count: int):
    """Replace (body None: drop) the `ext` member of `count` random samples."""
    keys = sorted({m.name.rsplit(".", 1)[0] for m, _ in members})
    chosen = set(rng.sample(keys, min(count, len(keys))))
    out = []
    for m, b in members:
        if m.name.rsplit(".", 1)[0] in chosen and m.name.endswith("." + ext):
            if body is None:
                continue
            b = body
        out.append((m, b))
    return out


def _special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


MEMBER_EDITS = {  # name -> (edit(members, rng), expect)
    "no image": (lambda m, r: _set_ext(m, r, "png", None, 5), "skip"),
    "no caption": (lambda m, r: _set_ext(m, r, "txt", None, 5), "skip"),
    "empty caption": (lambda m, r: _set_ext(m, r, "txt", b"", 5), "skip"),
    "blank caption": (lambda m, r: _set_ext(m, r, "txt", b"  \n\t ", 5), "skip"),
    "caption not UTF-8": (lambda m, r: _set_ext(m, r, "txt", b"\xff\xfe\xfa", 5), "skip"),
    "huge caption": (lambda m, r: _set_ext(m, r, "txt", "ünï ".encode() * 250000, 3), "skip_or_clean"),
    "image is text": (lambda m, r: _set_ext(m, r, "png", b"not an image", 5), "skip"),
    "empty image": (lambda m, r: _set_ext(m, r, "png", b"", 5), "skip"),
    "huge image header": (lambda m, r: _set_ext(m, r, "png", _png(100000, 100000), 5), "skip"),
    "big image, bad data": (lambda m, r: _set_ext(m, r, "png", _png(4000, 4000), 3), "skip"),
    "truncated png": (lambda m, r: [(i, b[: len(b) // 2] if i.name.endswith(".png") else b) for i, b in m], "skip"),
    "duplicate member": (lambda m, r: m[:6] + [m[3]] + m[6:], "skip"),
    "symlink member": (lambda m, r: m[:3] + [(_special("evil.png", tarfile.SYMTYPE, "/etc/passwd"), b"")] + m[3:],
                       "skip_or_clean"),
    "hardlink member": (lambda m, r: m[:3] + [(_special("evil.png", tarfile.LNKTYPE, m[1][0].name), b"")] + m[3:],
                        "skip_or_clean"),
    "directory member": (lambda m, r: [(_special("dir.png", tarfile.DIRTYPE), b"")] + m, "skip_or_clean"),
    "dotdot names": (lambda m, r: [(tarfile.TarInfo("../../" + i.name), b) for i, b in m], "skip_or_clean"),
    "absolute names": (lambda m, r: [(tarfile.TarInfo("/abs/" + i.name), b) for i, b in m], "skip_or_clean"),
    "unicode names": (lambda m, r: [(tarfile.TarInfo("ünï🙂" + i.name), b) for i, b in m], "skip_or_clean"),
    "no extensions": (lambda m, r: [(tarfile.TarInfo(i.name.replace(".", "_")), b) for i, b in m],
                      "skip_or_clean"),  # webdataset groups only names with an extension: nothing to count
    "long names": (lambda m, r: [(tarfile.TarInfo("d" * 200 + "/" + i.name), b) for i, b in m], "skip_or_clean"),
    "extra members": (lambda m, r: m + [(tarfile.TarInfo("zzz.cls"), b"7"), (tarfile.TarInfo("zzz.json"), b"{")],
                      "skip"),
    "reversed order": (lambda m, r: m[::-1], "skip_or_clean"),
}


def shard_case(rng: random.Random, root: Path, fx: dict) -> Case:
    data = copy_shards(fx, root)
    tars = [data / t for t in TARS]
    victim = rng.choice(tars)
    op = rng.choice(["truncate", "truncate", "overwrite", "random", "empty", "gzip", "members", "members",
                     "members", "all bad"])
    expect = "skip"
    size = victim.stat().st_size
    if op == "truncate":
        at = rng.randrange(size)
        victim.write_bytes(victim.read_bytes()[:at])
        what = f"truncate {victim.name} at {at}/{size}"
        expect = "skip" if at < size - 10240 else "skip_or_clean"
    elif op == "overwrite":
        at, n = rng.randrange(size), rng.choice([1, 16, 512, 4096])
        body = bytearray(victim.read_bytes())
        body[at:at + n] = rng.randbytes(min(n, size - at))
        victim.write_bytes(bytes(body))
        what, expect = f"random bytes {victim.name} [{at}:+{n}]", "skip_or_clean"
    elif op == "random":
        victim.write_bytes(rng.randbytes(rng.choice([1, 511, 512, 10240, 100000])))
        what = f"{victim.name} is random bytes"
    elif op == "empty":
        victim.write_bytes(b"" if rng.random() < 0.5 else b"\0" * 1024)
        what, expect = f"{victim.name} empty", "skip_or_clean"
    elif op == "gzip":
        victim.write_bytes(gzip.compress(victim.read_bytes()))
        what = f"{victim.name} gzipped"
    elif op == "members":
        name = rng.choice(sorted(MEMBER_EDITS))
        edit, expect = MEMBER_EDITS[name]
        _rewrite(victim, lambda members: edit(members, rng))
        what = f"{victim.name}: {name}"
    else:
        for t in tars:
            t.write_bytes(rng.randbytes(2048))
        what, expect = "every shard random bytes", "error"
    return Case("shard", what, Loader([str(t) for t in tars], fx["tokenizer"]), expect)
