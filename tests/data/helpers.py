"""Helpers for writing synthetic webdataset shards with webdataset's TarWriter."""
from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import webdataset as wds
from PIL import Image


def png_bytes(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path, samples: list[dict]) -> str:
    """samples: {"__key__": str, ext: bytes, ...}; written as-is (no encoding)."""
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def good_sample(i: int) -> dict:
    return {"__key__": f"item{i:05d}", "png": png_bytes(i), "txt": f"picture number {i}".encode(),
            "json": json.dumps({"i": i}).encode()}


def make_shards(directory, n_shards: int, per_shard: int) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    return [write_tar(directory / f"shard-{s:06d}.tar", [good_sample(s * per_shard + i) for i in range(per_shard)])
            for s in range(n_shards)]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose pixel data is a few bytes: never allocate it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
