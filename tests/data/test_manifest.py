import json

import pytest

from pretrain.data import prepare
from pretrain.data.manifest import load_shards, write_manifest


@pytest.fixture(scope="module")
def two_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("m")
    for name, limit in (("a", 25), ("b", 10)):
        prepare.main(["fashion_mnist", "--out", str(root / name), "--limit", str(limit), "--shard-size", "10"])
    return root


def test_forms(two_dirs):
    a = [str(two_dirs / "a" / f"shard-{i:06d}.tar") for i in range(3)]
    b = [str(two_dirs / "b" / "shard-000000.tar")]
    assert load_shards(str(two_dirs / "a" / "manifest.json")) == a
    assert load_shards(two_dirs / "a") == a
    assert load_shards(f"{two_dirs}/a/shard-{{000000..000002}}.tar") == a
    assert load_shards(f"{two_dirs}/a/shard-{{000000,000002}}.tar,{two_dirs}/b") == [a[0], a[2]] + b
    assert load_shards([str(two_dirs / "b"), a[1]]) == b + [a[1]]


def test_manifest_stacking_dirs(two_dirs):
    mix = two_dirs / "mix"
    mix.mkdir()
    write_manifest(mix, {"source": "mix", "shards": [{"path": "../a"}, {"path": "../b/manifest.json"}]})
    assert load_shards(mix) == load_shards(f"{two_dirs}/a,{two_dirs}/b")
    assert json.loads((mix / "manifest.json").read_text())["source"] == "mix"


def test_missing_paths_are_named(two_dirs):
    with pytest.raises(FileNotFoundError, match="a/shard-000003.tar"):
        load_shards(f"{two_dirs}/a/shard-{{000001..000009}}.tar")
    with pytest.raises(FileNotFoundError, match=str(two_dirs / "nowhere")):
        load_shards(f"{two_dirs}/a,{two_dirs}/nowhere")
    (two_dirs / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty/manifest.json"):
        load_shards(two_dirs / "empty")
    write_manifest(two_dirs / "empty", {"shards": [{"path": "gone.tar"}]})
    with pytest.raises(FileNotFoundError, match="gone.tar"):
        load_shards(two_dirs / "empty")
