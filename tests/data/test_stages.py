"""Data stages (load_stages) and sample counts (count_samples, load_shards_with_counts)."""
import json
import logging
import os
import shutil

import pytest

from pretrain.data.manifest import (
    StageError,
    count_samples,
    load_shards,
    load_shards_with_counts,
    load_stages,
    shard_sample_counts,
    write_manifest,
)

from .helpers import good_sample, make_shards, write_tar


@pytest.fixture(scope="module")
def stage_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    for name, n in (("a", 2), ("b", 1)):
        paths = make_shards(root / name, n, 4)
        write_manifest(root / name, {"source": "test", "samples": 4 * n,
                                     "shards": [{"path": os.path.basename(p), "samples": 4} for p in paths]})
    (root / "mix").mkdir()
    write_manifest(root / "mix", {"source": "mix", "shards": [{"path": "../a"}, {"path": "../b"}]})
    return root


def test_load_stages(stage_dirs):
    a = load_shards(stage_dirs / "a")
    b = load_shards(stage_dirs / "b")
    relative = os.path.relpath(a[1])  # the same shard spelled another way
    assert load_stages([str(stage_dirs / "a"), f"{stage_dirs / 'mix'}", [relative, a[0]] + b]) == \
        [a, a + b, [os.path.normpath(relative), a[0]] + b]


def test_stage_errors_name_the_stage_and_the_shard(stage_dirs):
    a = load_shards(stage_dirs / "a")
    with pytest.raises(StageError, match=r"data stage 2 \('.*b'\) drops shard .*a/shard-000000.tar of stage 1"):
        load_stages([str(stage_dirs / "a"), str(stage_dirs / "b")])
    with pytest.raises(StageError, match="data stage 3 .* drops shard .*a/shard-000001.tar"):
        load_stages([a[:1], a, [a[0]] + load_shards(stage_dirs / "b")])
    (stage_dirs / "none").mkdir()
    write_manifest(stage_dirs / "none", {"source": "empty", "shards": []})
    with pytest.raises(StageError, match=r"data stage 2 \('.*none'\): .*names no shards"):
        load_stages([str(stage_dirs / "a"), str(stage_dirs / "none")])
    with pytest.raises(StageError, match="data stage 1 .*names no shards"):
        load_stages(["", str(stage_dirs / "a")])
    assert issubclass(StageError, ValueError)


def test_count_samples_from_manifests(tmp_path):
    from pretrain.data import prepare
    prepare.main(["fashion_mnist", "--out", str(tmp_path / "fm"), "--limit", "25", "--shard-size", "10"])
    manifest = json.loads((tmp_path / "fm" / "manifest.json").read_text())
    assert count_samples(tmp_path / "fm") == manifest["samples"] == 25
    per_shard = [(str(tmp_path / "fm" / s["path"]), s["samples"]) for s in manifest["shards"]]
    assert load_shards_with_counts(tmp_path / "fm") == per_shard == [(p, n) for p, n in zip(
        load_shards(tmp_path / "fm"), (10, 10, 5))]
    assert count_samples(load_shards(tmp_path / "fm")) == 25  # bare tars of a prepared dir
    assert count_samples(f"{tmp_path}/fm/shard-{{000000..000001}}.tar") == 20
    # the manifests' numbers are what counts, not the tar's content (5 samples): the manifest naming the
    # shard, else the manifest beside a bare tar, else one scan of the tar's headers
    for name in ("claims", "loose"):
        (tmp_path / name).mkdir()
        shutil.copy(tmp_path / "fm" / "shard-000002.tar", tmp_path / name / "x.tar")
    write_manifest(tmp_path / "claims", {"shards": [{"path": "x.tar", "samples": 7}]})
    (tmp_path / "fm" / "sub").mkdir()
    write_manifest(tmp_path / "fm" / "sub", {"shards": [{"path": "../../claims/x.tar", "samples": 8}]})
    assert count_samples(tmp_path / "claims") == 7
    assert count_samples(tmp_path / "fm" / "sub") == 8
    assert count_samples(str(tmp_path / "claims" / "x.tar")) == 7
    assert count_samples(str(tmp_path / "loose" / "x.tar")) == 5


def test_count_samples_of_bare_and_damaged_tars(tmp_path, caplog):
    whole = write_tar(tmp_path / "whole.tar", [good_sample(i) for i in range(6)] +
                      [{"__key__": "lonely", "txt": b"only a caption"}])
    assert count_samples(whole) == 7  # a sample is a key, usable or not (as the loader's items)
    data = open(whole, "rb").read()
    (tmp_path / "cut.tar").write_bytes(data[: data.find(b"item00003.json") + 512 + 10])
    with caplog.at_level(logging.WARNING, logger="pretrain.data.manifest"):
        assert count_samples(str(tmp_path / "cut.tar")) == 4
    assert "cut.tar" in caplog.text


def test_shard_sample_counts_of_tar_paths(tmp_path):
    """What the loader counts its shards with: the manifest beside each tar (its claim wins), else a scan of
    the tar; a path is a path (a comma or brace in the name is no spec syntax)."""
    listed = make_shards(tmp_path / "d", 2, 4)
    write_manifest(tmp_path / "d", {"shards": [{"path": "shard-000000.tar", "samples": 9}]})
    odd = write_tar(tmp_path / "odd,{1..2}.tar", [good_sample(i) for i in range(3)])
    assert shard_sample_counts(listed + [odd]) == [9, 4, 3]
