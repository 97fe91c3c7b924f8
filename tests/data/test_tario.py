import io
import tarfile

import pytest

from pretrain.data.tario import TarCorrupt, tar_members


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_what_tarfile_writes(fmt):
    names = ["a.txt", "dir/b.png", "d" * 60 + "/" + "e" * 70 + ".json"]
    if fmt != tarfile.USTAR_FORMAT:
        names += ["x" * 150 + ".txt", "caf\u00e9.txt"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        directory = tarfile.TarInfo("somedir")
        directory.type = tarfile.DIRTYPE  # not a regular file: skipped
        tar.addfile(directory)
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = 700 * i
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    members = list(tar_members(io.BytesIO(buf.getvalue())))
    assert [m["fname"] for m in members] == names
    assert [m["data"] for m in members] == [bytes([i]) * (700 * i) for i in range(len(names))]


def test_damage_raises():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 1000
        tar.addfile(info, io.BytesIO(bytes(1000)))
    data = buf.getvalue()
    with pytest.raises(TarCorrupt, match="truncated"):
        list(tar_members(io.BytesIO(data[:800])))
    with pytest.raises(TarCorrupt, match="no end-of-archive"):
        list(tar_members(io.BytesIO(data[:512 + 1024])))
    flipped = bytearray(data)
    flipped[10] ^= 0xFF
    with pytest.raises(TarCorrupt, match="checksum"):
        list(tar_members(io.BytesIO(bytes(flipped))))
