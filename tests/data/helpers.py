"""Helpers for writing synthetic webdataset shards with webdataset's TarWriter, and serving shards over http."""
from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


class ShardServer:
    """Serves a directory over http on 127.0.0.1 (a daemon thread; `base` is its URL); `drops[name]` > 0 cuts that
    many responses for the file after half its bytes (-1: every response), with the full Content-Length announced. `requests` counts GETs per name."""

    def __init__(self, directory: Path):
        self.drops: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        outer = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args, **kw):
                super().__init__(*args, directory=str(directory), **kw)

            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests[name] = outer.requests.get(name, 0) + 1
                if outer.drops.get(name, 0):
                    outer.drops[name] -= outer.drops[name] > 0
                    data = (directory / name).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
